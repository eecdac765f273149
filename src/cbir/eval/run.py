"""Evaluate a model (frozen backbone or a trained head) on a protocol.

A *model* is a transform from backbone features to index vectors (see
:mod:`cbir.heads.transform`): the frozen backbone (``frozen``: centred by the
database mean then L2-normalised; ``frozen-raw``: L2 only) or a run directory of
``cbir train``. The same transform builds indexes, so the figures here are what an
index built with that model returns.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from cbir.codes.registry import code_kind
from cbir.errors import CbirError


def load_model(model: str | None, feature_dim: int = 1280):
    """``frozen`` / ``frozen-raw`` / a run directory -> (transform, description)."""
    from cbir.heads.transform import FrozenTransform

    if model in (None, "frozen"):
        return FrozenTransform(dim=feature_dim, center=True), "frozen (centred, cosine)"
    if model == "frozen-raw":
        return FrozenTransform(dim=feature_dim, center=False), "frozen (cosine)"
    from cbir.heads.learned import LearnedTransform

    p = Path(model)
    if not p.exists():
        raise CbirError(
            f"{model}: no such model; use frozen, frozen-raw, or a `cbir train` run directory"
        )
    t = LearnedTransform.from_path(p)
    what = code_kind(t).describe(t.dim)
    return t, f"{t.method} ({what}) from {p}"


def evaluate_features(
    transform: Any,
    query: np.ndarray,
    query_labels: np.ndarray,
    database: np.ndarray | None,
    database_labels: np.ndarray | None,
    protocol: Any,
    progress: bool | None = None,
    nmi: bool = True,
    rerank: Any = None,
    **options: Any,
) -> dict[str, Any]:
    """All the protocol's figures for ``transform`` on backbone features.

    ``database=None`` evaluates all-vs-all within the queries (each query excluded from
    its own results). NMI is computed on the float view of the query embeddings.
    ``rerank``: a :class:`cbir.search.rerank.Rerank` (query expansion, k-reciprocal)
    applied to every query's ranking (float and sparse codes).
    """
    from cbir.eval.metrics import evaluate_retrieval
    from cbir.eval.metrics import nmi as nmi_score

    fit_on = database if database is not None else query
    if (
        hasattr(transform, "mean")
        and getattr(transform, "center", False)
        and transform.mean is None
    ):
        transform.fit(np.asarray(fit_on))
    q = transform(np.asarray(query))
    all_vs_all = database is None
    db = q if all_vs_all else transform(np.asarray(database))
    dbl = query_labels if all_vs_all else database_labels
    code = code_kind(transform)
    kw: dict[str, Any] = {
        "metric": code.metric,
        "map_at": (protocol.map_at,) if protocol.map_at else (),
        "exclude_self": all_vs_all,
        "progress": progress,
        "hamming_radius": 2 if code.metric == "hamming" else None,
    }
    scorer = code.eval_scorer(q, db)  # asymmetric codes (SUBIC): their own scores
    if scorer is not None:
        kw["scores"] = scorer
    kw.update(options)
    if rerank is not None:
        if not code.rerankable:
            raise CbirError(
                "re-ranking needs float or sparse vectors, not binary codes; drop --rerank"
            )
        from cbir.search.rerank import rerank_scorer

        kw["scores"] = rerank_scorer(rerank, q, db, exclude_self=all_vs_all)
    m = evaluate_retrieval(q, db, query_labels, dbl, **kw)
    if nmi and np.asarray(query_labels).ndim == 1:
        m["nmi"] = float(
            nmi_score(transform.float_view(np.asarray(query)), np.asarray(query_labels))
        )
    return m


def drop_unreadable(images: Any, feats: np.ndarray) -> tuple[Any, np.ndarray, list[str]]:
    """Drop the images whose features are NaN (they could not be decoded).

    Returns the remaining images (a subset, labels kept aligned), their features, and
    one "path: reason" line per dropped image.
    """
    from cbir.errors import ImageError

    bad = np.flatnonzero(np.isnan(feats[:, 0])) if len(feats) else np.zeros(0, np.int64)
    if not len(bad):
        return images, feats, []
    lines = []
    for i in bad:
        try:
            images.load(int(i))
            lines.append(f"{images.keys[i]}: could not be read when its features were computed")
        except ImageError as e:
            lines.append(str(e))
    keep = np.setdiff1d(np.arange(len(images)), bad)
    return images.subset(keep, images.name), np.asarray(feats[keep]), lines


def _run_config(model: str | None) -> dict[str, Any] | None:
    """The config.json of a ``cbir train`` run directory (None for frozen models)."""
    if model in (None, "frozen", "frozen-raw"):
        return None
    p = Path(model)
    p = p if p.is_dir() else p.parent
    try:
        return json.loads((p / "config.json").read_text())
    except (OSError, ValueError):
        return None


def _same_data(run: dict[str, Any], dataset: str, protocol: str | None) -> bool:
    d = str(run.get("dataset"))
    same = (
        os.path.abspath(d) == os.path.abspath(dataset) if os.path.exists(dataset) else d == dataset
    )
    return same and run.get("protocol") == protocol


def _splits(
    dataset: str, protocol: str | None, seed: int, split: str | None, fraction: float
) -> tuple[Any, Any, Any]:
    """``resolve`` with ``split="auto"``: the default split on a folder without train/test."""
    from cbir.eval.protocols import DEFAULT_SPLIT, is_unsplit, resolve, with_split

    if split != "auto":
        return resolve(dataset, protocol, seed, split=split, train_fraction=fraction)
    proto, ds, splits = resolve(dataset, protocol, seed)
    if is_unsplit(proto, ds):
        proto, splits = with_split(proto, ds, DEFAULT_SPLIT, seed, fraction, dataset)
    return proto, ds, splits


def _run_split(run: dict[str, Any]) -> str | None:
    """The split a run trained with (None: its protocol's, or every image of a folder;
    "auto": the folder default). Runs made before folders were split trained on every
    image."""
    if "split" not in run or run.get("eval_on_train"):
        return None
    return run.get("split") or "auto"


def _trained_on(run: dict[str, Any]) -> list[str] | None:
    """Keys of the images a run's training split holds (None: its data is not here)."""
    try:
        _p, _d, s = _splits(
            str(run["dataset"]),
            run.get("protocol"),
            int(run.get("seed", 0)),
            _run_split(run),
            float(run.get("train_fraction", 0.5)),
        )
    except (CbirError, KeyError, OSError):
        return None
    return None if s.train is None else list(s.train.keys)


def evaluate(
    dataset: str,
    protocol: str | None = None,
    model: str | None = None,
    size: int | None = None,
    seed: int = 0,
    progress: bool | None = None,
    limit_queries: int | None = None,
    map_at: tuple[int, ...] | None = None,
    rerank: Any = None,
    split: str | None = None,
    train_fraction: float = 0.5,
    eval_on_train: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run a protocol; returns (summary for --json, context for the report).

    ``map_at``: the mAP cut-offs to report (default: the protocol's own, if any).
    ``rerank``: re-rank each query's results (:class:`cbir.search.rerank.Rerank`).
    ``split``: a folder's ``same-classes`` / ``zero-shot`` split (seed, ``train_fraction``);
    a run evaluated on the data it was trained on gets its own split by default. Query
    images the run was trained on are refused unless ``eval_on_train`` (then a warning).
    """
    from cbir.backbones.cache import dataset_features
    from cbir.eval.protocols import split_line

    t0 = time.perf_counter()
    run = _run_config(model)
    if split is None and run is not None and _same_data(run, dataset, protocol):
        split, seed = _run_split(run), int(run.get("seed", seed))
        train_fraction = float(run.get("train_fraction", train_fraction))
    proto, ds, splits = _splits(dataset, protocol, seed, split, train_fraction)
    warning = None
    trained = None if run is None else _trained_on(run)
    overlap = 0 if trained is None else splits.overlap(trained)
    if overlap and not eval_on_train:
        raise CbirError(
            f"{model} was trained on {overlap} of the {len(splits.query)} query images, so the"
            " figures would score what it learned; evaluate held-out images (--split as it was"
            " trained, or other data) or pass --eval-on-train to do it anyway"
        )
    if overlap:
        warning = (
            f"evaluated on the model's own training images ({overlap} of the"
            f" {len(splits.query)} queries, --eval-on-train): the figures overstate what it"
            " does on new images"
        )
    # the frozen model on a whole folder trains on nothing: no training images to show
    shown = replace(splits, train=None) if run is None and split is None else splits
    transform, desc = load_model(model)
    if hasattr(transform, "backbone"):
        size = size or transform.backbone["preprocess"]["size"]
        if size != transform.backbone["preprocess"]["size"]:
            raise CbirError(
                f"{model} was trained at --size {transform.backbone['preprocess']['size']}, not {size}"
            )
    size = size or proto.size
    query = splits.query
    if limit_queries and limit_queries < len(query):
        idx = np.sort(np.random.default_rng(seed).choice(len(query), limit_queries, replace=False))
        query = query.subset(idx, f"{query.name}-q{limit_queries}")
    weights = getattr(transform, "backbone_weights", None)  # a fine-tuned backbone's file
    qf = dataset_features(query, size=size, progress=progress, weights=weights, skip_failed=True)
    query, qf, skipped = drop_unreadable(query, qf)
    database, dbf = splits.database, None
    if database is not None:
        dbf = dataset_features(
            database, size=size, progress=progress, weights=weights, skip_failed=True
        )
        database, dbf, db_skipped = drop_unreadable(database, dbf)
        skipped += db_skipped
    if skipped:  # as `cbir index` reports the files it could not read
        print(
            f"cbir evaluate: skipped {len(skipped)} image(s) that cannot be read:", file=sys.stderr
        )
        for line in skipped[:20]:
            print(f"  failed: {line}", file=sys.stderr)
    if hasattr(transform, "backbone"):
        from cbir.backbones.registry import open_backbone

        if open_backbone(size=size, weights=weights).fingerprint != transform.backbone:
            raise CbirError(f"{model} was trained on another backbone; retrain it with this cbir")
    t1 = time.perf_counter()
    m = evaluate_features(
        transform,
        qf,
        query.labels,
        dbf,
        None if database is None else database.labels,
        proto,
        progress=progress,
        **({} if map_at is None else {"map_at": tuple(map_at)}),
        rerank=rerank,
    )
    t2 = time.perf_counter()
    metrics = {k: v for k, v in m.items() if k not in ("curves",) and not k.startswith("n_")}
    summary = {
        "protocol": proto.name,
        "description": proto.description,
        "dataset": ds.name,
        "model": desc,
        "kind": transform.kind,
        "rerank": None if rerank is None else rerank.params(),
        "size": size,
        "metrics": metrics,
        "n_queries": m["n_queries"],
        "n_queries_no_relevant": m.get("n_queries_no_relevant", 0),
        "n_database": m["n_database"],
        "skipped": skipped,
        "split": {"name": proto.name, "line": split_line(proto, shown), "sizes": shown.sizes()},
        "warning": warning,
        "seconds": {
            "features": round(t1 - t0, 2),
            "metrics": round(t2 - t1, 2),
            "total": round(t2 - t0, 2),
        },
    }
    context = {
        "curves": m.get("curves", {}),
        "splits": replace(splits, query=query, database=database),
        "query_set": query,
        "transform": transform,
        "query_features": qf,
        "database_features": dbf,
        "protocol": proto,
    }
    return summary, context

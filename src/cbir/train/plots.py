"""The pictures of a run: the loss curve and a t-SNE map of the test embedding.

``loss.png`` plots ``metrics.jsonl`` (loss per epoch, and the evaluated mAP / Recall@1 on
a second axis). ``tsne.png`` is a 2-D t-SNE (van der Maaten & Hinton, "Visualizing Data
using t-SNE", JMLR 2008; scikit-learn's Barnes-Hut implementation) of the head's outputs
for a seeded subset of the protocol's query split, coloured by class; binary codes are
shown through their real-valued outputs (before ``sign``). The subset's indices are
saved in ``tsne.json``, so :func:`redraw` (``cbir plot RUN_DIR``) draws the same map
again from the run directory: ``metrics.jsonl``, the checkpoint and the cached backbone
features.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from cbir.backbones.cache import dataset_features
from cbir.errors import CbirError
from cbir.eval.protocols import default_protocol, get_protocol
from cbir.heads.learned import LearnedTransform
from cbir.train.config import TSNE_POINTS, TrainConfig
from cbir.train.data import run_splits
from cbir.train.registry import read_config
from cbir.utils import atomic_write_bytes, atomic_write_json

LOSS_PNG = "loss.png"
TSNE_PNG = "tsne.png"
TSNE_JSON = "tsne.json"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_curves(path: str | os.PathLike[str], rows: list[dict[str, Any]], title: str) -> None:
    """Loss per epoch (and the evaluated figure, on a second axis) as a PNG."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    ep = [r["epoch"] for r in rows]
    ax.plot(ep, [r["loss"] for r in rows], color="tab:blue", marker=".", label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss", color="tab:blue")
    key = next((k for k in ("map", "recall@1") if any(k in r.get("eval", {}) for r in rows)), None)
    if key:
        ev = [(r["epoch"], r["eval"][key]) for r in rows if key in r.get("eval", {})]
        ax2 = ax.twinx()
        ax2.plot([e for e, _ in ev], [v for _, v in ev], color="tab:red", marker="o", label=key)
        ax2.set_ylabel(f"{key} (query subset)", color="tab:red")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _save(fig, Path(path))


def tsne_subset(n: int, points: int, seed: int) -> np.ndarray:
    """Sorted indices of ``min(points, n)`` items out of ``n``, drawn with ``seed``."""
    if points >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, 7]).choice(n, points, replace=False))


def class_of(labels: np.ndarray) -> np.ndarray:
    """One class per item: the label, or the first label of a multi-hot row."""
    y = np.asarray(labels)
    return y.argmax(1) if y.ndim == 2 else y


def tsne_map(outputs: np.ndarray, seed: int, perplexity: float = 30.0) -> np.ndarray:
    """2-D t-SNE coordinates of ``outputs`` (PCA initialisation, seeded: reproducible)."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = np.asarray(outputs, np.float32)
    perplexity = float(min(perplexity, max(1.0, (len(x) - 1) / 3)))
    tsne = TSNE(2, perplexity=perplexity, init="pca", random_state=seed % 2**32, n_jobs=1)
    with threadpool_limits(1):  # OpenMP threads spin on a shared CPU: 10x the CPU time
        return tsne.fit_transform(x)


def plot_tsne(
    path: str | os.PathLike[str],
    xy: np.ndarray,
    classes: np.ndarray,
    title: str,
    names: list[str] | None = None,
) -> None:
    """Scatter plot of t-SNE coordinates ``xy`` coloured by ``classes`` as a PNG."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5.4), dpi=110)
    labels = np.unique(classes)
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    size = float(np.clip(8000 / max(len(xy), 1), 3, 24))
    for i, c in enumerate(labels):
        m = classes == c
        name = names[int(c)] if names is not None and 0 <= int(c) < len(names) else str(c)
        color = cmap(i % cmap.N)
        ax.scatter(xy[m, 0], xy[m, 1], s=size, color=color, label=name, alpha=0.8, linewidths=0)
    if len(labels) <= 20:
        ax.legend(fontsize=7, markerscale=3, loc="best", frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _save(fig, Path(path))


def _outputs(transform: Any, query: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The head's outputs of ``query[idx]``; a model that reduces its outputs on the
    collection's principal axes (``--reduce collection``) fits them on the queries first."""
    if getattr(transform, "reduce", None) and transform.spectral_map is None:
        transform.fit(query)
    return transform.outputs(query[idx])


def write_tsne(
    run: str | os.PathLike[str],
    transform: Any,
    query: np.ndarray,
    labels: np.ndarray,
    title: str,
    points: int = TSNE_POINTS,
    seed: int = 0,
    perplexity: float = 30.0,
    names: list[str] | None = None,
) -> dict[str, Any]:
    """Draw ``RUN_DIR/tsne.png`` for ``transform`` (a learned head) on a subset of the
    query features; saves the subset in ``tsne.json``; returns what it saved."""
    run = Path(run)
    idx = tsne_subset(len(query), points, seed)
    if len(idx) < 5:
        raise CbirError(
            f"{run}: a t-SNE map needs at least 5 query images, the protocol has {len(idx)}"
        )
    outputs = _outputs(transform, np.asarray(query), idx)
    classes = class_of(np.asarray(labels)[idx])
    xy = tsne_map(outputs, seed, perplexity)
    plot_tsne(run / TSNE_PNG, xy, classes, title, names)
    info = {
        "split": "query",
        "n_query": int(len(query)),
        "indices": [int(i) for i in idx],
        "seed": int(seed),
        "perplexity": float(perplexity),
        "title": title,
    }
    atomic_write_json(run / TSNE_JSON, info)
    return info


def _title(cfg: TrainConfig, protocol: str) -> str:
    return f"{cfg.method}, {cfg.options.describe()}, {protocol}"


def read_rows(run: Path) -> list[dict[str, Any]]:
    path = run / "metrics.jsonl"
    if not path.exists():
        raise CbirError(f"{run}: no metrics.jsonl here; is it a `cbir train` run directory?")
    rows = []
    for no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise CbirError(f"{path}: line {no} is not JSON ({e.msg}); retrain the run") from e
    return rows


def redraw(
    run: str | os.PathLike[str],
    tsne: bool = True,
    points: int | None = None,
    perplexity: float | None = None,
    progress: bool | None = False,
) -> dict[str, Any]:
    """Redraw ``loss.png`` and ``tsne.png`` of a run directory (``cbir plot RUN_DIR``).

    The t-SNE input is the subset of query images recorded in ``tsne.json`` (or, for a
    run without one, or with ``points``, a new seeded subset), embedded with the run's
    checkpoint from the cached backbone features. Returns the files written.
    """
    run = Path(run)
    cfg = read_config(run)
    rows = read_rows(run)
    proto = get_protocol(cfg.protocol) if cfg.protocol else default_protocol(cfg.dataset)
    title = _title(cfg, proto.name)
    plot_curves(run / LOSS_PNG, rows, title)
    written = {"loss": str(run / LOSS_PNG)}
    if not tsne:
        return written
    transform = LearnedTransform.from_path(run)
    saved: dict[str, Any] = {}
    if (run / TSNE_JSON).exists():
        saved = json.loads((run / TSNE_JSON).read_text())
    # a fine-tuned run (--finetune) embeds with its own backbone file
    query, labels, names = query_split(cfg, progress, getattr(transform, "backbone_weights", None))
    seed = int(saved.get("seed", cfg.seed))
    perp = float(perplexity if perplexity is not None else saved.get("perplexity", 30.0))
    if points is None and saved.get("indices"):
        if saved.get("n_query") != len(query):
            raise CbirError(
                f"{run / TSNE_JSON}: recorded for {saved.get('n_query')} query images, the "
                f"protocol now has {len(query)}; redraw with --points N for a new subset"
            )
        idx = np.asarray(saved["indices"], np.int64)
        outputs = _outputs(transform, np.asarray(query), idx)
        xy = tsne_map(outputs, seed, perp)
        tsne_title = saved.get("title") or f"{title}: query embedding (t-SNE)"
        plot_tsne(run / TSNE_PNG, xy, class_of(np.asarray(labels)[idx]), tsne_title, names)
        atomic_write_json(run / TSNE_JSON, {**saved, "perplexity": perp})
    else:
        n = points if points is not None else int(cfg.tsne_points or TSNE_POINTS)
        tsne_title = f"{title}: query embedding (t-SNE)"
        write_tsne(run, transform, query, labels, tsne_title, n, seed, perp, names)
    written["tsne"] = str(run / TSNE_PNG)
    return written


def query_split(
    cfg: TrainConfig,
    progress: bool | None = False,
    weights: str | os.PathLike[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """Backbone features (from the cache; only this split's), labels and class names of
    the run's query split: the subset the trainer evaluated on. ``weights``: a fine-tuned
    backbone's file (default: the ImageNet weights)."""
    proto, ds, _train, query, _db = run_splits(cfg)
    kw = {} if weights is None else {"weights": weights}
    feats = np.asarray(
        dataset_features(query, size=cfg.size or proto.size, progress=progress, **kw)
    )
    return feats, np.asarray(query.labels), list(ds.class_names) or None

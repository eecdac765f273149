"""Evaluate an index as it serves: ``cbir evaluate --index INDEX_DIR --labels folder|CSV``.

Every labelled image of the index queries the whole index through
:meth:`cbir.search.searcher.Searcher.search_features`, the call behind ``cbir search id:N``
(the index's backbone features, its recorded transform: centring or a trained head, its
search index, and the ``--rerank`` options given), and the figures are computed from those
rankings (all-vs-all, each query's own image left out). So what this measures is what
``cbir search`` returns, to the last rank.

Labels: ``folder`` takes each image's parent folder name; a CSV file gives ``path,label``
rows (paths absolute or relative to the CSV's folder; a header row is allowed). Images
without a label stay in the database (never relevant) and do not query.
"""

from __future__ import annotations

import csv
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from cbir.errors import CbirError

#: Queries searched per call (each returns the whole ranking).
BATCH = 64


def read_labels(labels: str, paths: list[str]) -> list[str | None]:
    """The label of each path: ``"folder"`` (its parent folder's name) or a CSV file."""
    if labels == "folder":
        return [Path(p).parent.name for p in paths]
    src = Path(labels)
    if not src.is_file():
        raise CbirError(f"--labels {labels}: give 'folder' or a CSV file of path,label rows")
    by_path: dict[str, str] = {}
    try:
        with src.open(newline="", encoding="utf-8") as f:
            for i, row in enumerate(csv.reader(f)):
                if not row or not row[0].strip():
                    continue
                if len(row) < 2:
                    raise CbirError(f"{src}: line {i + 1} has no label; each row is path,label")
                p = Path(row[0].strip())
                p = p if p.is_absolute() else src.parent / p
                by_path[os.path.abspath(p)] = row[1].strip()
    except (OSError, UnicodeDecodeError) as e:
        raise CbirError(
            f"{src}: cannot read the labels ({e}); give a UTF-8 CSV of path,label"
        ) from None
    out = [by_path.get(os.path.abspath(p)) for p in paths]
    if by_path and not any(v is not None for v in out):
        raise CbirError(
            f"{src}: none of its {len(by_path)} paths is in the index; paths are absolute or"
            " relative to the CSV's folder"
        )
    return out


def _served_scores(searcher: Any, ids: np.ndarray) -> Any:
    """``scores(rows) -> (len, N)`` from the served rankings: ``N - rank`` for each hit
    (distinct, in the order served); images a search did not return share score 0."""
    n = len(ids)
    col = {int(i): j for j, i in enumerate(ids)}
    lock = threading.Lock()  # the evaluator runs blocks in threads; one search at a time

    def scores(rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, np.int64)
        out = np.zeros((len(rows), n), np.float32)
        with lock:
            _fill(out, rows)
        return out

    def _fill(out: np.ndarray, rows: np.ndarray) -> None:
        for a in range(0, len(rows), BATCH):
            part = rows[a : a + BATCH]
            feats = searcher.store.features(ids[part].tolist())
            for r, hits in enumerate(searcher.search_features(feats, k=n)):
                for h in hits:
                    j = col.get(h.id)
                    if j is not None:
                        out[a + r, j] = float(n - h.rank + 1)

    return scores


def evaluate_index(
    index_dir: str | os.PathLike[str],
    labels: str = "folder",
    rerank: Any = None,
    map_at: tuple[int, ...] = (),
    progress: bool | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Figures of an index as ``cbir search`` serves it; returns (summary, context)."""
    from cbir.eval.metrics import evaluate_retrieval, nmi
    from cbir.heads.transform import spec_digest
    from cbir.search.searcher import Searcher

    t0 = time.perf_counter()
    searcher = Searcher(index_dir, rerank=rerank)
    try:
        rows = searcher.store.rows()
        ids = np.array([r["id"] for r in rows], np.int64)
        paths = [r["path"] for r in rows]
        names = read_labels(labels, paths)
        if len(ids) < 2:
            raise CbirError(f"{index_dir}: evaluating needs at least 2 indexed images")
        known = sorted({v for v in names if v is not None})
        code = {v: i for i, v in enumerate(known)}
        # an image without a label gets a class of its own: relevant to no query
        y = np.array(
            [code[v] if v is not None else len(known) + i for i, v in enumerate(names)], np.int64
        )
        unlabelled = sum(v is None for v in names)
        dummy = np.zeros((len(ids), 1), np.float32)  # rankings come from the scores
        m = evaluate_retrieval(
            dummy,
            dummy,
            y,
            y,
            map_at=map_at,
            exclude_self=True,
            progress=progress,
            scores=_served_scores(searcher, ids),
        )
        transform = searcher.transform
        spec = transform.spec()
        labelled = np.flatnonzero(y < len(known))
        if hasattr(transform, "float_view") and len(known) > 1 and len(labelled) > len(known):
            feats = searcher.store.features(ids[labelled].tolist())
            m["nmi"] = float(nmi(np.asarray(transform.float_view(feats)), y[labelled]))
    finally:
        searcher.close()
    t1 = time.perf_counter()
    metrics = {k: v for k, v in m.items() if k != "curves" and not k.startswith("n_")}
    centred = spec.get("center")
    desc = spec.get("method") or ("frozen (centred, cosine)" if centred else "frozen (cosine)")
    summary = {
        "protocol": "index",
        "description": (
            f"the index {index_dir} as `cbir search` serves it: every labelled image"
            f" ({labels} labels) queries the whole index, its own image left out"
        ),
        "dataset": str(index_dir),
        "model": desc,
        "model_fingerprint": spec_digest(spec),
        "kind": transform.kind,
        "rerank": None if rerank is None else rerank.params(),
        "metrics": metrics,
        "n_queries": m["n_queries"],
        "n_queries_no_relevant": m.get("n_queries_no_relevant", 0) - unlabelled,
        "n_database": len(ids),
        "n_unlabelled": unlabelled,
        "skipped": [],
        "seconds": {"features": 0.0, "metrics": round(t1 - t0, 2), "total": round(t1 - t0, 2)},
    }
    return summary, {"curves": m.get("curves", {})}

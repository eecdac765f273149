"""Image search restricted to the ids that pass a ``--where`` filter.

The answer holds ``k`` results whenever ``k`` images pass. Float indexes filter inside
faiss (``IDSelectorBatch`` in the search parameters); where that finds fewer than ``k``
(an approximate index, or binary codes), a selective filter (few passing images) is
searched exactly over just those images' stored features, in a flat
index of the same kind (inner product, or Hamming for binary codes); a broad one searches
the index itself deeper, widening until ``k`` passing hits are found or the whole index
has been ranked.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

#: Up to this many passing images, search exactly over them alone.
EXACT_MAX = 16384
#: Filter float searches inside faiss first (off: only the exact / deeper paths).
USE_SELECTOR = True


def _flat(transform: Any, codes: np.ndarray, ids: np.ndarray) -> Any:
    if transform.kind == "binary":
        from cbir.index.binary_index import make_binary_index

        index = make_binary_index("BFlat", transform.dim)
        index.add_with_ids(codes, ids)
        return index
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(codes.shape[1]))
    index.add_with_ids(np.ascontiguousarray(codes, np.float32), ids)
    return index


def _search(
    index: Any, transform: Any, q: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(scores, ids, Hamming distances or None): the searcher's score convention."""
    if transform.kind == "binary":
        dist, ids = index.search(q, k)
        return 1.0 - dist.astype(np.float64) / transform.dim, ids, dist
    scores, ids = index.search(np.ascontiguousarray(q, np.float32), k)
    return scores, ids, None


def search_allowed(
    index: Any, transform: Any, store: Any, q: np.ndarray, k: int, allowed: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Top-``k`` among ``allowed`` ids for each (transformed) query row; -1 pads."""
    allowed = np.unique(np.asarray(allowed, np.int64))
    nq = len(q)
    if len(allowed) == 0:
        return np.zeros((nq, 0)), np.zeros((nq, 0), np.int64), None
    kk = min(k, len(allowed))
    if USE_SELECTOR and transform.kind != "binary":
        # faiss filters inside the search (IDSelectorBatch); an approximate index (HNSW,
        # IVF) may find fewer than kk passing vectors, and then the paths below answer
        try:
            params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed))
            scores, ids = index.search(np.ascontiguousarray(q, np.float32), kk, params=params)
        except (RuntimeError, TypeError):  # an index type without selector support
            pass
        else:
            if bool(((ids >= 0).sum(1) >= kk).all()):
                return scores, ids, None
    if len(allowed) <= EXACT_MAX:
        codes = transform(store.features(allowed.tolist()))
        return _search(_flat(transform, codes, allowed), transform, q, kk)
    n = int(index.ntotal)
    depth = min(n, max(2 * k, int(2 * k * n / len(allowed))))
    while True:
        scores, ids, dist = _search(index, transform, q, depth)
        ok = np.isin(ids, allowed) & (ids >= 0)
        if depth >= n or bool((ok.sum(1) >= kk).all()):
            break
        depth = min(n, depth * 4)
    out_s = np.zeros((nq, kk), np.float64)
    out_i = np.full((nq, kk), -1, np.int64)
    out_d = None if dist is None else np.zeros((nq, kk), dist.dtype)
    for r in range(nq):
        cols = np.flatnonzero(ok[r])[:kk]
        out_s[r, : len(cols)] = scores[r, cols]
        out_i[r, : len(cols)] = ids[r, cols]
        if out_d is not None and dist is not None:
            out_d[r, : len(cols)] = dist[r, cols]
    return out_s, out_i, out_d

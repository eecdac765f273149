"""Image search restricted to the ids that pass a ``--where`` filter.

The answer holds ``k`` results whenever ``k`` images pass. The backend filters inside
its index where it can (faiss ``IDSelectorBatch`` for float indexes); where that finds
fewer than ``k`` (an approximate index, binary or sparse codes, shards, Milvus), a
selective filter (few passing images) is searched exactly over just those images' stored
codes (:meth:`cbir.codes.base.CodeKind.rescore`: a flat index of the same kind); a broad
one searches the backend deeper (:func:`search_deeper`), widening until ``k`` passing
hits are found or the whole index has been ranked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from cbir.codes.base import Ranked
from cbir.codes.registry import code_kind

#: Up to this many passing images, search exactly over them alone.
EXACT_MAX = 16384
#: Filter inside the backend's index first (off: only the exact / deeper paths).
USE_SELECTOR = True


def search_deeper(
    search: Callable[[int], Ranked],
    passes: Callable[[np.ndarray], np.ndarray],
    k: int,
    n: int,
    depth: int,
) -> Ranked:
    """The first ``k`` passing hits of each row, searching ``depth``, then 4x deeper, until
    every row has ``k`` of them or all ``n`` items are ranked; -1 pads.

    ``search(depth)`` -> ``(scores, ids, distances or None)``; ``passes(ids)`` -> a boolean
    array of the same shape (padding ids, -1, never pass).
    """
    depth = max(1, min(n, depth))
    while True:
        scores, ids, dist = search(depth)
        ok = passes(ids) & (ids >= 0)
        if depth >= n or bool((ok.sum(1) >= k).all()):
            break
        depth = min(n, depth * 4)
    nq = len(ids)
    out_s = np.zeros((nq, k), np.float64)
    out_i = np.full((nq, k), -1, np.int64)
    out_d = None if dist is None else np.zeros((nq, k), dist.dtype)
    for r in range(nq):
        cols = np.flatnonzero(ok[r])[:k]
        out_s[r, : len(cols)] = scores[r, cols]
        out_i[r, : len(cols)] = ids[r, cols]
        if out_d is not None and dist is not None:
            out_d[r, : len(cols)] = dist[r, cols]
    return out_s, out_i, out_d


def search_allowed(
    backend: Any, transform: Any, store: Any, q: Any, k: int, allowed: np.ndarray
) -> Ranked:
    """Top-``k`` among ``allowed`` ids for each (transformed) query row; -1 pads.

    ``backend``: a :class:`~cbir.index.backends.base.VectorBackend` at the generation of
    ``store`` (whose stored features give the exact path its codes).
    """
    allowed = np.unique(np.asarray(allowed, np.int64))
    nq = q.shape[0]
    if len(allowed) == 0:
        return np.zeros((nq, 0)), np.zeros((nq, 0), np.int64), None
    kk = min(k, len(allowed))
    if USE_SELECTOR:
        got = backend.search_among(q, kk, allowed)
        if got is not None:
            return got
    if len(allowed) <= EXACT_MAX:
        codes = transform(store.features(allowed.tolist()))
        return code_kind(transform).rescore(q, codes, allowed, kk, transform.dim)
    n = backend.ntotal
    return search_deeper(
        lambda depth: backend.search(q, depth),
        lambda ids: np.isin(ids, allowed),
        kk,
        n,
        max(2 * k, int(2 * k * n / len(allowed))),
    )

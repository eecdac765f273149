"""Retrieval metrics as the papers report them, computed exactly, in bounded memory.

Every figure comes from the ranking of the database for each query: by descending inner
product for float rows (``metric="cosine"``; the caller L2-normalises) or by ascending
Hamming distance for packed binary codes (``metric="hamming"``, faiss ``IndexBinary``
layout). Hamming distances tie a lot (and float scores now and then), and the order
inside a tie group is arbitrary, so the main figures are **tie-aware**: the expected
value over a uniformly random order within each group of tied items, in closed form, no
sampling (McSherry & Najork, "Computing Information Retrieval Performance Measures
Efficiently in the Presence of Tied Scores", ECIR 2008). ``map_ordered`` is what a plain
sort gives (ties broken by database index), for comparison with code that does that.

Conventions. Each figure is the mean over the queries that have at least one relevant
item in the database; the others are left out of every mean and counted in
``n_queries_no_relevant`` (DeepHash-pytorch's ``CalcTopMap`` divides by all queries,
which understates mAP when some query has no relevant item).

- ``map``: mean average precision over the whole ranking (mAP@all).
- ``map@K``: as the hashing papers' code computes it (HashNet; DeepHash-pytorch
  ``CalcTopMap``): ``AP@K = sum_{i<=K} P@i rel_i / (#relevant in the top K)``, and 0 when
  the top K holds no relevant item although the query has some.
- ``p@K`` / ``r@K``: share of the top K that is relevant / of the relevant items that is
  in the top K (``p@K`` divides by K even when the database is smaller).
- ``recall@K``: metric-learning Recall@K, the share of queries with at least one relevant
  item in the top K.
- ``p@hR`` / ``r@hR`` (codes only): precision / recall of the items within Hamming radius
  R; a query with nothing within the radius has precision 0, as the hashing papers count it.
- ``map@r`` / ``r_precision``: MAP@R and R-precision of Musgrave, Belongie & Lim, "A
  Metric Learning Reality Check" (ECCV 2020), as pytorch-metric-learning computes them;
  R = the number of relevant items in the database for that query.

With ties crossing a cut-off K, every @K figure is its exact expected value; for
``map@K`` (a ratio) that is a sum over the hypergeometric number of relevant items that
the cut-off takes from the crossing group. Relevance is "same class" for 1-D labels and
"at least one shared label" for 2-D multi-hot labels (NUS-WIDE, COCO).

Computation: queries go in blocks (at most ~4M query-database pairs each, a few blocks
side by side in threads), so memory stays bounded at any size, and each query's figures
are kept by index, so the chunk size does not change them. Float rows: one int64 sort per
query of (score key, database index) yields both the index-ordered ranking and the tie
groups. Codes: per-distance counts of items and relevant items (``np.bincount`` over
distances 0..bits) give every tie-aware figure in O(bits) per query.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from cbir.codes.bits import as_words, hamming_words
from cbir.eval.ties import Cut, Tables

__all__ = ["TIES", "evaluate_retrieval", "hamming_distances", "nmi", "relevance"]

TIES = (
    "map, map@K, p@K, r@K, recall@K, map@r, r_precision and the p@k curve are tie-aware "
    "(exact expected value over random orders within groups of tied items, McSherry & "
    "Najork 2008); map_ordered breaks ties by database index; p@hR, r@hR and the PR curve "
    "take every item within the radius / above the threshold, so ties do not affect them"
)

_PAIRS_PER_BLOCK = 1 << 22  # query x database pairs per block: ~200 MB of work arrays
_MAX_WORKERS = 4  # blocks evaluated side by side (threads; at most one per CPU)
_LO, _HI = (0, 1) if sys.byteorder == "little" else (1, 0)  # int32 halves of an int64
_INT32_MAX = np.iinfo(np.int32).max


# ---------------------------------------------------------------------------- helpers
def hamming_distances(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    """Hamming distances ``(len(queries), len(database))`` between packed uint8 codes."""
    q, db = as_words(queries), as_words(database)
    return hamming_words(q, db, q.shape[1] * 64)


def _is_sparse(x: Any) -> bool:
    return hasattr(x, "tocsr") and hasattr(x, "nnz")


def _rows(x: Any) -> Any:
    """Dense rows as an ndarray; scipy sparse rows as float32 CSR (sparse codes)."""
    return x.tocsr().astype(np.float32) if _is_sparse(x) else np.asarray(x)


def _finite(x: Any) -> bool:
    return bool(np.isfinite(x.data if _is_sparse(x) else x).all())


def relevance(query_labels: np.ndarray, db_labels: np.ndarray) -> np.ndarray:
    """Boolean relevance: same class (1-D labels) or at least one shared label (2-D)."""
    ql, dbl = np.asarray(query_labels), np.asarray(db_labels)
    if ql.ndim == 1:
        return ql[:, None] == dbl[None, :]
    return (ql.astype(np.float32) @ dbl.astype(np.float32).T) > 0


def _default_pk(n: int) -> list[int]:
    top = max(1, min(n, 1000))
    return [int(k) for k in np.unique(np.round(np.logspace(0, np.log10(top), 20)).astype(int))]


# ---------------------------------------------------------------------------- evaluator
class _Evaluator:
    """Blocks of queries against the whole database; per-query figures kept by index."""

    def __init__(
        self,
        queries: np.ndarray,
        database: np.ndarray,
        ql: np.ndarray,
        dbl: np.ndarray,
        opts: dict[str, Any],
    ) -> None:
        self.o = opts
        self.binary = opts["metric"] == "hamming"
        self.exclude_self = opts["exclude_self"]
        nq, N = queries.shape[0], database.shape[0]
        self.N, self.nq = N, nq
        self.scorer: Callable[[np.ndarray], np.ndarray] | None = opts.get("scores")
        self.sparse = _is_sparse(queries)
        self.ncol = N - 1 if self.exclude_self else N
        if self.binary:
            self.q, self.db = as_words(queries), as_words(database)
            self.bits = database.shape[1] * 8
        else:
            if self.sparse:  # scipy sparse rows: scored by sparse products
                self.q, self.db = queries, database
                self.dbT = database.T.tocsr()
            else:
                self.q = np.ascontiguousarray(queries, np.float32)
                self.db = np.ascontiguousarray(database, np.float32)
            self.index = np.arange(N, dtype=np.int64)
        self.multi = ql.ndim == 2
        if self.multi:
            self.ql = np.ascontiguousarray(ql, np.float32)
            self.dblT = np.ascontiguousarray(dbl.T, np.float32)
        else:  # compact int32 class ids
            _, inv = np.unique(np.concatenate([ql, dbl]), return_inverse=True)
            self.ql, self.dbl = inv[:nq].astype(np.int32), inv[nq:].astype(np.int32)
        self.tab = Tables(self.ncol + 1)
        self.pos = np.arange(1, self.ncol + 1, dtype=np.float64)
        self.vals: dict[str, np.ndarray] = {}
        self.curve_parts: dict[int, dict[str, np.ndarray]] = {}
        self.thresholds: np.ndarray | None = None
        if not self.binary:
            self.thresholds = self._float_thresholds()

    # ------------------------------------------------------------ shared pieces
    def _put(self, key: str, a: int, values: np.ndarray) -> None:
        arr = self.vals.get(key)
        if arr is None:  # setdefault: atomic if two blocks get here at once
            arr = self.vals.setdefault(key, np.full(self.nq, np.nan))
        arr[a : a + len(values)] = values

    def _relevance(self, a: int, b: int) -> np.ndarray:
        """``(b - a, N)`` relevance of the block's queries (before any ranking)."""
        if self.multi:
            return (self.ql[a:b] @ self.dblT) > 0
        return self.ql[a:b, None] == self.dbl[None, :]

    def _figures(
        self, a: int, R: np.ndarray, cut: Any, map_sum: np.ndarray, ordered_sum: np.ndarray
    ) -> None:
        """The rank-based figures of a block from ``cut(k) -> Cut`` (k per query)."""
        o, rows, ncol = self.o, len(R), self.ncol
        Rs = np.maximum(R, 1).astype(np.float64)  # rows with R = 0 are masked at the end
        self._put("map", a, map_sum / Rs)
        self._put("map_ordered", a, ordered_sum / Rs)
        col = lambda k: np.full(rows, float(min(k, ncol)))  # noqa: E731
        for k in o["map_at"]:
            self._put(f"map@{k}", a, cut(col(k)).ap())
        for k in o["precision_at"]:
            got = cut(col(k)).rel()
            self._put(f"p@{k}", a, got / k)
            self._put(f"r@{k}", a, got / Rs)
        for k in o["recall_at"]:
            self._put(f"recall@{k}", a, 1.0 - cut(col(k)).p_none())
        if o["map_at_r"]:
            c = cut(np.maximum(R, 1).astype(np.float64))
            self._put("map@r", a, c.sum_prec() / Rs)
            self._put("r_precision", a, c.rel() / Rs)
        pk = (
            np.stack([cut(col(k)).rel() / k for k in o["pk"]], 1)
            if o["pk"]
            else np.zeros((rows, 0))
        )
        self._put_curve(a, "pk", pk, R)

    def _put_curve(self, a: int, name: str, values: np.ndarray, R: np.ndarray) -> None:
        part = self.curve_parts.setdefault(a, {})
        part[name] = values[R > 0].sum(0)

    # ------------------------------------------------------------ float scores
    def _scores(self, rows: np.ndarray) -> np.ndarray:
        """Float32 scores ``(len(rows), N)`` of the queries ``rows``: the caller's
        ``scores`` function (re-ranking) if given, else the inner products."""
        if self.scorer is not None:
            return np.array(self.scorer(rows), dtype=np.float32)
        if self.sparse:
            return np.asarray((self.q[rows] @ self.dbT).toarray(), np.float32)
        return self.q[rows] @ self.db.T

    def _keys(self, scores: np.ndarray, a: int) -> np.ndarray:
        """Row-wise int64 sort keys: high half orders by descending score, low half is
        the database index (ties broken by index); the query itself sorts last."""
        scores += 0.0  # -0.0 -> +0.0: equal scores, equal keys
        m = scores.view(np.int32)
        t = m >> 31
        t &= 0x7FFFFFFF
        t ^= m  # int32 order == float order
        np.invert(t, out=t)  # ascending key == descending score
        if self.exclude_self:
            rows = np.arange(len(t))
            t[rows, a + rows] = _INT32_MAX
        key = t.astype(np.int64)
        key <<= 32
        key |= self.index
        return key

    @staticmethod
    def _score_key(x: np.ndarray) -> np.ndarray:
        """The high-half key of float32 scores (as in :meth:`_keys`)."""
        m = np.ascontiguousarray(x, np.float32) + np.float32(0.0)
        m = m.view(np.int32)
        return ~(m ^ ((m >> 31) & 0x7FFFFFFF))

    def _float_thresholds(self) -> np.ndarray:
        """PR-curve score thresholds: quantiles 1 - i/P (i = 1..P) of the relevant-pair
        scores of a fixed, evenly spaced sample of queries (one block's worth, at most
        256), so that the points spread evenly in recall whatever the chunk size."""
        P = self.o["pr_points"]
        if P <= 0:
            return np.zeros(0, np.float32)
        size = min(self.nq, 256, max(1, _PAIRS_PER_BLOCK // self.N))
        sample = np.unique(np.linspace(0, self.nq - 1, size).round().astype(np.int64))
        scores = self._scores(sample)
        rel = (
            relevance(self.ql[sample], self.dbl)
            if not self.multi
            else (self.ql[sample] @ self.dblT) > 0
        )
        if self.exclude_self:
            rel[np.arange(len(sample)), sample] = False
        pool = scores[rel] if rel.any() else scores.ravel()
        levels = 1.0 - np.arange(1, P + 1) / P
        return np.quantile(pool.astype(np.float64), levels).astype(np.float32)

    def float_block(self, a: int, b: int) -> None:
        rows, ncol = b - a, self.ncol
        key = self._keys(self._scores(np.arange(a, b)), a)
        key.sort(axis=1)
        halves = key.view(np.int32).reshape(rows, self.N, 2)
        idx, gid = halves[:, :ncol, _LO], halves[:, :ncol, _HI]
        if self.multi:
            rs = np.take_along_axis(self._relevance(a, b), idx, axis=1)
        else:
            rs = self.dbl[idx] == self.ql[a:b, None]
        del key
        C = np.cumsum(rs, axis=1, dtype=np.int32)
        R = C[:, -1].astype(np.int64)
        contrib = np.zeros((rows, ncol))
        np.divide(C, self.pos, out=contrib, where=rs)
        ordered_sum = contrib.sum(axis=1)

        # tie groups (rare for float scores): exact contributions at tied positions
        eq = gid[:, 1:] == gid[:, :-1]
        tflat = np.zeros(0, np.int64)
        if eq.any():
            tied = np.zeros((rows, ncol), bool)
            tied[:, 1:] |= eq
            tied[:, :-1] |= eq
            tflat = np.flatnonzero(tied)
            tr, tp = tflat // ncol, tflat % ncol
            first = (tp == 0) | ~eq[tr, np.maximum(tp - 1, 0)]
            last = (tp == ncol - 1) | ~eq[tr, np.minimum(tp, ncol - 2)]
            g = np.cumsum(first) - 1
            S_t, E_t = tp[first][g], tp[last][g]
            Rb = np.where(S_t > 0, C[tr, np.maximum(S_t - 1, 0)], 0).astype(np.float64)
            r = C[tr, E_t] - Rb
            n = (E_t - S_t + 1).astype(np.float64)
            j = tp - S_t
            contrib[tr, tp] = r / n * (Rb + 1 + j * (r - 1) / (n - 1)) / (tp + 1)
        T = np.cumsum(contrib, axis=1, out=contrib)  # tie-aware prefix of sum P@i rel_i
        rowi = np.arange(rows)

        def cut(k: np.ndarray) -> Cut:
            p = k.astype(np.int64) - 1
            S, E = p.copy(), p.copy()
            if len(tflat):
                f = rowi * ncol + p
                i = np.minimum(np.searchsorted(tflat, f), len(tflat) - 1)
                hit = tflat[i] == f
                S[hit], E[hit] = S_t[i[hit]], E_t[i[hit]]
            before = np.maximum(S - 1, 0)
            Rb = np.where(S > 0, C[rowi, before], 0).astype(np.float64)
            A = np.where(S > 0, T[rowi, before], 0.0)
            r = C[rowi, E] - Rb
            return Cut(k, S.astype(np.float64), (E - S + 1).astype(np.float64), r, Rb, A, self.tab)

        self._figures(a, R, cut, T[:, -1].copy(), ordered_sum)

        # PR curve by score threshold: every item scoring >= t is retrieved
        th = self._score_key(self.thresholds)
        if len(th):
            cnt = np.stack([np.searchsorted(gid[i], th, side="right") for i in range(rows)])
            got = np.where(cnt > 0, C[rowi[:, None], np.maximum(cnt - 1, 0)], 0)
            prec = np.where(cnt > 0, got / np.maximum(cnt, 1), 0.0)
            self._put_curve(a, "pr_p", prec, R)
            self._put_curve(a, "pr_r", got / np.maximum(R, 1)[:, None], R)
        self._put("_R", a, R.astype(np.float64))

    # ------------------------------------------------------------ binary codes
    def binary_block(self, a: int, b: int) -> None:
        rows, ncol, bits = b - a, self.ncol, self.bits
        dist = hamming_words(self.q[a:b], self.db, bits)
        rel = self._relevance(a, b)
        if self.exclude_self:
            rowi = np.arange(rows)
            dist[rowi, a + rowi] = bits + 1  # the query itself: its own bucket, dropped
            rel[rowi, a + rowi] = False
        G = bits + 2
        flat = dist.astype(np.int32)
        flat += (np.arange(rows, dtype=np.int32) * G)[:, None]
        n = np.bincount(flat.ravel(), minlength=rows * G).reshape(rows, G)[:, : bits + 1]
        r = np.bincount(flat[rel], minlength=rows * G).reshape(rows, G)[:, : bits + 1]
        del flat
        # ties broken by database index: a stable (radix) sort of the distances
        order = np.argsort(dist, axis=1, kind="stable")[:, :ncol]
        rs = np.take_along_axis(rel, order, axis=1)
        del order, dist, rel
        C = np.cumsum(rs, axis=1, dtype=np.int32)
        ordered = np.zeros((rows, ncol))
        np.divide(C, self.pos, out=ordered, where=rs)
        ordered_sum = ordered.sum(axis=1)
        del ordered, C, rs

        # one tie group per distance 0..bits
        n, r = n.astype(np.float64), r.astype(np.float64)
        cumN, cumR = np.cumsum(n, 1), np.cumsum(r, 1)
        Nb, Rb = cumN - n, cumR - r
        full = Cut(cumN, Nb, np.maximum(n, 1), r, Rb, np.zeros_like(n), self.tab)
        contrib = full.sum_prec()  # each whole group's share of sum P@i rel_i
        T = np.cumsum(contrib, 1)
        Tb = np.zeros_like(T)
        Tb[:, 1:] = T[:, :-1]
        R = cumR[:, -1].astype(np.int64)
        rowi = np.arange(rows)

        def cut(k: np.ndarray) -> Cut:
            g = (cumN < k[:, None]).sum(1)
            return Cut(k, Nb[rowi, g], n[rowi, g], r[rowi, g], Rb[rowi, g], Tb[rowi, g], self.tab)

        self._figures(a, R, cut, T[:, -1].copy(), ordered_sum)

        # within radius h = 0..bits (precision 0 when nothing is within the radius)
        prec = np.where(cumN > 0, cumR / np.maximum(cumN, 1), 0.0)
        rec = cumR / np.maximum(R, 1)[:, None]
        h = self.o["hamming_radius"]
        if h is not None:
            hh = min(h, bits)
            self._put(f"p@h{h}", a, prec[:, hh])
            self._put(f"r@h{h}", a, rec[:, hh])
        self._put_curve(a, "pr_p", prec, R)
        self._put_curve(a, "pr_r", rec, R)
        self._put("_R", a, R.astype(np.float64))

    def block(self, a: int, b: int) -> None:
        (self.binary_block if self.binary else self.float_block)(a, b)


def _check_ks(name: str, ks: Sequence[int]) -> list[int]:
    out = [int(k) for k in ks]
    if any(k < 1 for k in out):
        raise ValueError(f"{name} must hold positive ranks, got {list(ks)}")
    return out


def evaluate_retrieval(
    queries: np.ndarray,
    database: np.ndarray,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    *,
    metric: str = "cosine",
    map_at: Sequence[int] = (),
    precision_at: Sequence[int] = (1, 10, 100),
    recall_at: Sequence[int] = (1, 2, 4, 8),
    hamming_radius: int | None = 2,
    map_at_r: bool = True,
    exclude_self: bool = False,
    pr_points: int = 21,
    pk_curve: Sequence[int] | None = None,
    chunk_size: int = 512,
    progress: bool | None = None,
    scores: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Retrieval figures of ``queries`` against ``database`` (conventions: module doc).

    Args:
        queries, database: float rows scored by inner product (``"cosine"``: the caller
            L2-normalises), or packed uint8 codes compared by Hamming distance
            (``"hamming"``, ``bits = 8 * ncols``).
        query_labels, db_labels: 1-D class ids, or 2-D multi-hot rows.
        metric: ``"cosine"`` or ``"hamming"``.
        map_at: cut-offs K of ``map@K``.
        precision_at: K of ``p@K`` and ``r@K``.
        recall_at: K of the metric-learning ``recall@K``.
        hamming_radius: R of ``p@hR`` and ``r@hR`` (codes only; None: skip).
        map_at_r: compute ``map@r`` and ``r_precision``.
        exclude_self: the queries are the database (all-vs-all); item i never retrieves
            itself and each query ranks the other ``n - 1`` items.
        pr_points: points of the float PR curve (codes: one point per radius 0..bits).
        pk_curve: the k of the precision@k curve (default: log-spaced up to 1,000).
        chunk_size: most queries per block; blocks also stay under ~4M query-database
            pairs, so memory is bounded whatever the sizes (~200 MB per block; up to
            one block per CPU, at most 4, runs at a time in threads).
        progress: tqdm bar on stderr (None: when stderr is a terminal).
        scores: float rows only: ``scores(query_indices) -> (len, N)`` scores that replace
            the inner products (re-ranking, :mod:`cbir.search.rerank`); ``queries`` and
            ``database`` may also be scipy sparse rows (sparse codes), scored by sparse
            products.

    Returns:
        The figures named in the module doc (means over the ``n_queries`` queries with a
        relevant item; NaN if there is none), ``n_queries``, ``n_queries_no_relevant``,
        ``n_database`` (``len(database)``), ``ties`` (which figures are tie-aware) and
        ``curves``: ``{"pr": {"recall", "precision", "threshold", "by"},
        "p_at_k": {"k", "precision"}}``.
    """
    if metric not in ("cosine", "hamming"):
        raise ValueError(f"metric must be 'cosine' or 'hamming', got {metric!r}")
    queries, database = _rows(queries), _rows(database)
    ql, dbl = np.asarray(query_labels), np.asarray(db_labels)
    if queries.ndim != 2 or database.ndim != 2 or queries.shape[1] != database.shape[1]:
        raise ValueError(
            f"queries {queries.shape} and database {database.shape} must be 2-D with equal widths"
        )
    nq, N = queries.shape[0], database.shape[0]
    if len(ql) != nq or len(dbl) != N:
        raise ValueError(
            f"labels must have one row per item: {len(ql)} for {nq} queries, {len(dbl)} for {N} items"
        )
    if (
        ql.ndim != dbl.ndim
        or ql.ndim not in (1, 2)
        or (ql.ndim == 2 and ql.shape[1] != dbl.shape[1])
    ):
        raise ValueError(
            "labels must both be 1-D class ids or both 2-D multi-hot rows of one width"
        )
    if exclude_self and (nq != N or queries.shape != database.shape):
        raise ValueError("exclude_self needs the queries to be the database (all-vs-all)")
    if N - int(exclude_self) < 1 or nq < 1:
        raise ValueError("nothing to evaluate: no queries or an empty database")
    if metric == "cosine":
        if not (_finite(queries) and _finite(database)):
            raise ValueError("embeddings hold NaN or infinite values")
    ncol = N - int(exclude_self)
    opts: dict[str, Any] = {
        "metric": metric,
        "map_at": _check_ks("map_at", map_at),
        "precision_at": _check_ks("precision_at", precision_at),
        "recall_at": _check_ks("recall_at", recall_at),
        "hamming_radius": None if hamming_radius is None else int(hamming_radius),
        "map_at_r": map_at_r,
        "exclude_self": exclude_self,
        "pr_points": int(pr_points),
        "pk": _check_ks("pk_curve", pk_curve) if pk_curve is not None else _default_pk(ncol),
    }
    if metric == "hamming" and (_is_sparse(queries) or _is_sparse(database)):
        raise ValueError("sparse rows are scored by inner product: use metric='cosine'")
    opts["scores"] = scores
    ev = _Evaluator(queries, database, ql, dbl, opts)
    step = max(1, min(int(chunk_size), _PAIRS_PER_BLOCK // N))
    starts = list(range(0, nq, step))
    show = sys.stderr.isatty() if progress is None else progress
    bar = None
    if show:
        from tqdm import tqdm

        bar = tqdm(total=nq, unit="query", desc="evaluating", file=sys.stderr)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = min(_MAX_WORKERS, cpus or 1, len(starts))
    try:
        if workers <= 1:
            for a in starts:
                ev.block(a, min(nq, a + step))
                if bar is not None:
                    bar.update(min(nq, a + step) - a)
        else:  # numpy and BLAS release the GIL: blocks run side by side
            pool = ThreadPoolExecutor(workers)
            try:
                futures = [pool.submit(ev.block, a, min(nq, a + step)) for a in starts]
                for a, fut in zip(starts, futures, strict=True):
                    fut.result()
                    if bar is not None:
                        bar.update(min(nq, a + step) - a)
            finally:  # on an error (or Ctrl-C) drop the blocks not started yet
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        if bar is not None:
            bar.close()
    return _summarise(ev, opts, starts)


def _summarise(ev: _Evaluator, opts: dict[str, Any], starts: list[int]) -> dict[str, Any]:
    valid = ev.vals.pop("_R") > 0
    used = int(valid.sum())
    out: dict[str, Any] = {}
    for key, arr in ev.vals.items():
        out[key] = float(arr[valid].mean()) if used else float("nan")
    # curves: per-block sums added in block order (deterministic for a chunk size)
    tot: dict[str, np.ndarray] = {}
    for a in starts:
        for name, v in ev.curve_parts.get(a, {}).items():
            tot[name] = tot[name] + v if name in tot else v.copy()
    d = max(used, 1)
    if ev.binary:
        threshold: list[float] = list(range(ev.bits + 1))
    else:
        threshold = [float(t) for t in (ev.thresholds if ev.thresholds is not None else [])]
    out.update(
        n_queries=used,
        n_queries_no_relevant=ev.nq - used,
        n_database=ev.N,
        ties=TIES,
        curves={
            "pr": {
                "recall": (tot.get("pr_r", np.zeros(len(threshold))) / d).tolist(),
                "precision": (tot.get("pr_p", np.zeros(len(threshold))) / d).tolist(),
                "threshold": threshold,
                "by": "hamming radius" if ev.binary else "score",
            },
            "p_at_k": {
                "k": list(opts["pk"]),
                "precision": (tot.get("pk", np.zeros(len(opts["pk"]))) / d).tolist(),
            },
        },
    )
    return out


def nmi(embeddings: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """NMI of k-means clusters (k = number of classes) against the labels.

    As pytorch-metric-learning's ``AccuracyCalculator`` computes it: ``faiss.Kmeans``
    with ``niter=20`` on float32 embeddings, each point assigned to its nearest centroid,
    then scikit-learn's ``normalized_mutual_info_score``. PML leaves faiss's own seed
    (1234); pass ``seed=1234`` to reproduce its number exactly.
    """
    import faiss
    from sklearn.metrics import normalized_mutual_info_score

    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError("nmi needs 1-D class labels")
    x = np.ascontiguousarray(embeddings, np.float32)
    k = len(np.unique(labels))
    km = faiss.Kmeans(x.shape[1], k, niter=20, seed=int(seed))
    km.train(x)
    _, assign = km.index.search(x, 1)
    return float(normalized_mutual_info_score(labels, assign[:, 0]))

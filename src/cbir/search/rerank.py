"""Re-ranking after the first search: query expansion and k-reciprocal re-ranking.

Three modes, numpy-first, on unit vectors (float embeddings, or the L2-normalised sparse
codes of :mod:`cbir.heads.sparse`, where inner product is cosine):

- ``qe``: average query expansion (Chum, Philbin, Sivic, Isard & Zisserman, "Total
  Recall", ICCV 2007): search again with the normalised mean of the query and its top
  results.
- ``alpha-qe`` (also ``aqe``): alpha-weighted query expansion (Radenovic, Tolias & Chum,
  "Fine-tuning CNN Image Retrieval with No Human Annotation", TPAMI 2018): the top
  results weighted by ``similarity ** alpha``; ``alpha = 0`` is average QE.
- ``kreciprocal``: k-reciprocal re-ranking (Zhong, Zheng, Cao & Li, "Re-ranking Person
  Re-identification with k-reciprocal Encoding", CVPR 2017): k-reciprocal nearest
  neighbour sets (expanded by their half-size k-reciprocal sets that overlap them by more
  than 2/3), Gaussian-weighted set vectors ``V``, local query expansion over ``k2``
  neighbours, the Jaccard distance of the ``V`` vectors, and
  ``final = (1 - lambda) * jaccard + lambda * original`` (squared Euclidean distances,
  each row divided by its maximum, as the authors' code does).

QE counts the query as the first of the ``n`` vectors it averages (its own similarity
is 1): ``n = 1`` is the plain search, ``n = 11`` the query and its top 10 results.

k-reciprocal re-ranking is restricted to each query's top-``shortlist`` results, as most
implementations do at scale: the neighbour lists it needs are computed within the pool
{query} + shortlist (one ``(shortlist + 1)^2`` similarity matrix per query, batched), not
over the whole database. The shortlist is reordered by the final distance; items beyond it
keep their original order after it (in Zhong et al.'s formula, an item outside every
k-reciprocal set has Jaccard distance 1, so this is their ordering with the sets taken
within the pool). Memory is bounded by the batch: evaluating 10,000 queries against
60,000 items never holds more than a block of scores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from cbir.errors import CbirError

MODES = {
    "qe": "qe",
    "aqe": "alpha-qe",
    "alpha-qe": "alpha-qe",
    "kreciprocal": "kreciprocal",
    "k-reciprocal": "kreciprocal",
}
#: Queries whose (shortlist + 1)^2 pools are processed together.
POOL_BATCH = 64


@dataclass(frozen=True)
class Rerank:
    """A re-ranking mode and its parameters (see the module doc).

    Args:
        mode: "qe", "alpha-qe" or "kreciprocal".
        n: QE: vectors averaged, the query counted as the first.
        alpha: alpha-QE: the exponent of the similarity weights.
        k1, k2, lam: k-reciprocal: neighbourhood size, local expansion size, weight of
            the original distance.
        shortlist: k-reciprocal: results re-ranked per query.
    """

    mode: str
    n: int = 10
    alpha: float = 3.0
    k1: int = 20
    k2: int = 6
    lam: float = 0.3
    shortlist: int = 100

    def __post_init__(self) -> None:
        if self.mode not in MODES.values():
            raise CbirError(
                f"unknown re-ranking {self.mode!r}; use qe, alpha-qe (aqe) or kreciprocal"
            )
        if self.n < 1:
            raise CbirError("--rerank-n must be at least 1 (1: the query alone, plain search)")
        if self.alpha < 0:
            raise CbirError("--rerank-alpha must be >= 0")
        if self.k1 < 1 or self.k2 < 1:
            raise CbirError("--rerank-k1 and --rerank-k2 must be at least 1")
        if not 0.0 <= self.lam <= 1.0:
            raise CbirError("--rerank-lambda must be between 0 and 1")
        if self.shortlist < 1:
            raise CbirError("--rerank-shortlist must be at least 1")

    def params(self) -> dict[str, Any]:
        """The parameters that matter for this mode."""
        keys = {
            "qe": ("n",),
            "alpha-qe": ("n", "alpha"),
            "kreciprocal": ("k1", "k2", "lam", "shortlist"),
        }
        d = asdict(self)
        return {"mode": self.mode, **{k: d[k] for k in keys[self.mode]}}

    def describe(self) -> str:
        p = self.params()
        return p.pop("mode") + " (" + ", ".join(f"{k}={v}" for k, v in p.items()) + ")"


def make_rerank(mode: str | None, **params: Any) -> Rerank | None:
    """A :class:`Rerank` from a mode name (None: no re-ranking) and its parameters."""
    if mode is None:
        return None
    if mode not in MODES:
        raise CbirError(f"unknown --rerank {mode!r}; use qe, alpha-qe (aqe) or kreciprocal")
    return Rerank(MODES[mode], **{k: v for k, v in params.items() if v is not None})


# ------------------------------------------------------------------ numpy core
def _normalize(x: Any) -> Any:
    """Rows scaled to unit L2 norm (dense float32 or sparse CSR)."""
    if sp.issparse(x):
        x = sp.csr_matrix(x, dtype=np.float32)
        norms = np.sqrt(np.asarray(x.multiply(x).sum(1)).ravel())
        return sp.csr_matrix(sp.diags(1.0 / np.maximum(norms, 1e-12)) @ x, dtype=np.float32)
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _bmm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Batched float32 matrix products (torch.bmm: numpy's stacked matmul and many small
    BLAS calls are orders of magnitude slower here); numpy's without torch."""
    try:
        import torch
    except ImportError:  # the base install: same products, slower
        return np.matmul(np.asarray(a, np.float32), np.asarray(b, np.float32))

    ta = torch.from_numpy(np.ascontiguousarray(a, np.float32))
    tb = torch.from_numpy(np.ascontiguousarray(b, np.float32))
    return torch.bmm(ta, tb).numpy()


def qe_weights(sims: np.ndarray, alpha: float) -> np.ndarray:
    """Weights of the expansion vectors: 1 for average QE (``alpha = 0``), else
    ``max(sim, 0) ** alpha`` (alpha-QE)."""
    sims = np.asarray(sims, np.float64)
    return np.ones_like(sims) if alpha == 0 else np.maximum(sims, 0.0) ** alpha


def expand_queries(
    queries: Any, database: Any, neighbours: np.ndarray, sims: np.ndarray, alpha: float = 0.0
) -> Any:
    """Expanded queries ``normalize(q + sum_j w_j database[neighbours_j])``.

    ``neighbours``/``sims``: ``(m, n - 1)`` database rows and their similarities to the
    query (``-1``: none). Dense rows give dense rows, sparse rows sparse ones.
    """
    neighbours = np.asarray(neighbours, np.int64)
    m = neighbours.shape[0]
    w = qe_weights(sims, alpha)
    ok = neighbours >= 0
    W = sp.csr_matrix(
        (w[ok].astype(np.float32), (np.nonzero(ok)[0], neighbours[ok])),
        shape=(m, database.shape[0]),
    )
    add = W @ database
    out = (
        (sp.csr_matrix(queries, dtype=np.float32) + add)
        if sp.issparse(database)
        else np.asarray(queries, np.float32) + add
    )
    return _normalize(out)


def k_reciprocal_distances(
    sim: np.ndarray, k1: int = 20, k2: int = 6, lam: float = 0.3
) -> np.ndarray:
    """Final k-reciprocal distances ``(m, P - 1)`` of Zhong et al. (CVPR 2017).

    ``sim``: ``(m, P, P)`` cosine similarities within each query's pool, index 0 the
    query and 1..P-1 its shortlist. Distances are ``||a - b||^2 = 2 - 2 cos``, each row
    divided by its maximum; the pool is the paper's probe + gallery set.
    """
    sim = np.asarray(sim, np.float64)
    m, P, _ = sim.shape
    d = np.maximum(2.0 - 2.0 * sim, 0.0)
    for i in range(P):  # an item is its own nearest neighbour
        d[:, i, i] = 0.0
    D = d / np.maximum(d.max(axis=2, keepdims=True), 1e-12)
    rank = np.argsort(D, axis=2, kind="stable")
    pos = np.empty_like(rank)
    np.put_along_axis(pos, rank, np.broadcast_to(np.arange(P), rank.shape), axis=2)
    F = pos <= k1  # j among the k1 + 1 nearest of i (itself included)
    R = F & F.transpose(0, 2, 1)  # k-reciprocal: i also among the k1 + 1 nearest of j
    kh = int(np.around(k1 / 2.0))
    Fh = pos <= kh
    Rh = (Fh & Fh.transpose(0, 2, 1)).astype(np.float32)
    Rf = R.astype(np.float32)
    overlap = _bmm(Rf, Rh.transpose(0, 2, 1))  # |R(i) & Rh(c)|
    cond = R & (overlap > (2.0 / 3.0) * Rh.sum(2)[:, None, :])
    E = R | (_bmm(cond.astype(np.float32), Rh) > 0)  # the expanded k-reciprocal set
    W = np.where(E, np.exp(-D), 0.0)
    V = W / W.sum(2, keepdims=True)
    if k2 != 1:  # local query expansion: mean of V over the k2 nearest
        nn_ = rank[:, :, :k2]
        V = V[np.arange(m)[:, None, None], nn_].mean(axis=2)
    tmin = np.minimum(V[:, :1, :], V[:, 1:, :]).sum(2)
    jaccard = 1.0 - tmin / (2.0 - tmin)
    return (1.0 - lam) * jaccard + lam * D[:, 0, 1:]


def _order(scores: np.ndarray, n: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Column indices of the top ``n`` of each row by (score desc, column asc)."""
    s = np.array(scores, np.float64)
    rows = np.arange(len(s))
    if exclude is not None:
        s[rows, exclude] = -np.inf
    n = min(n, s.shape[1] - (0 if exclude is None else 1))
    if n <= 0:
        return np.zeros((len(s), 0), np.int64)
    part = (
        np.argpartition(-s, n - 1, axis=1)[:, :n]
        if n < s.shape[1]
        else np.tile(np.arange(s.shape[1]), (len(s), 1))
    )
    kth = s[rows[:, None], part].min(1)
    out = np.empty((len(s), n), np.int64)
    for r in range(len(s)):  # ties at the cut-off go to the smaller column
        cand = np.flatnonzero(s[r] >= kth[r])
        out[r] = cand[np.lexsort((cand, -s[r, cand]))][:n]
    return out


def _pool_similarities(q: Any, database: Any, short: np.ndarray) -> np.ndarray:
    """``(m, P, P)`` similarities within {query} + its shortlist rows of ``database``."""
    m, n = short.shape
    if sp.issparse(database):
        out = np.empty((m, n + 1, n + 1), np.float32)
        qs = sp.csr_matrix(q)
        for r in range(m):
            X = sp.vstack([qs[r], database[short[r]]], format="csr")
            out[r] = (X @ X.T).toarray()
        return out
    X = np.concatenate(
        [np.asarray(q, np.float32)[:, None, :], np.asarray(database, np.float32)[short]], axis=1
    )
    return _bmm(X, X.transpose(0, 2, 1))


def kreciprocal_rerank(q: Any, database: Any, short: np.ndarray, rr: Rerank) -> np.ndarray:
    """Final distances ``(m, len(shortlist))`` of each query's shortlist rows."""
    out = np.empty(short.shape, np.float64)
    for a in range(0, len(short), POOL_BATCH):
        b = min(len(short), a + POOL_BATCH)
        sim = _pool_similarities(q[a:b], database, short[a:b])
        out[a:b] = k_reciprocal_distances(sim, rr.k1, rr.k2, rr.lam)
    return out


# ------------------------------------------------------------------ evaluation
def rerank_scorer(
    rr: Rerank, queries: Any, database: Any, exclude_self: bool = False
) -> Callable[[np.ndarray], np.ndarray]:
    """``scores(query_rows) -> (len, N)`` re-ranked scores, for
    :func:`cbir.eval.metrics.evaluate_retrieval` (``scores=``).

    QE: the inner products of the expanded queries. k-reciprocal: the shortlist gets
    ``3 - final distance`` (above every cosine, in the re-ranked order), the rest keep
    their cosine. ``exclude_self``: all-vs-all, query ``i`` is database row ``i`` and
    never its own neighbour.
    """
    dbT = database.T.tocsr() if sp.issparse(database) else None

    def base(rows: np.ndarray, qv: Any) -> np.ndarray:
        if dbT is not None:
            return np.asarray((qv @ dbT).toarray(), np.float32)
        return np.asarray(qv, np.float32) @ np.asarray(database, np.float32).T

    def scores(rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, np.int64)
        qv = queries[rows]
        S = base(rows, qv)
        exclude = rows if exclude_self else None
        if rr.mode in ("qe", "alpha-qe"):
            if rr.n <= 1:
                return S
            nb = _order(S, rr.n - 1, exclude)
            sims = np.take_along_axis(S, nb, axis=1)
            return base(
                rows,
                expand_queries(qv, database, nb, sims, rr.alpha if rr.mode == "alpha-qe" else 0.0),
            )
        short = _order(S, rr.shortlist, exclude)
        final = kreciprocal_rerank(qv, database, short, rr)
        np.put_along_axis(S, short, (3.0 - final).astype(np.float32), axis=1)
        return S

    return scores


# ------------------------------------------------------------------ index search
def _search(index: Any, q: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    if sp.issparse(q):
        return index.search(q, k)
    return index.search(np.ascontiguousarray(q, np.float32), k)


def search_reranked(
    rr: Rerank, index: Any, q: Any, k: int, vectors: Callable[[np.ndarray], Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Re-ranked top ``k`` from an index: ``(scores (m, k), ids (m, k))``, ``-1`` padded.

    ``index.search(q, k) -> (scores, ids)`` (faiss float or :class:`~cbir.index.sparse.SparseIndex`);
    ``vectors(ids)``: the index-space vectors (dense rows or CSR) of stored ids.
    QE scores are cosines with the expanded query; k-reciprocal scores ``1 - final distance``.
    """
    m = q.shape[0]
    if rr.mode in ("qe", "alpha-qe"):
        if rr.n <= 1:
            return _search(index, q, k)
        D, I = _search(index, q, rr.n - 1)
        uniq, inv = np.unique(I[I >= 0], return_inverse=True)
        if not len(uniq):
            return _search(index, q, k)
        nb = np.full(I.shape, -1, np.int64)
        nb[I >= 0] = inv
        alpha = rr.alpha if rr.mode == "alpha-qe" else 0.0
        return _search(index, expand_queries(q, vectors(uniq), nb, D, alpha), k)
    n = min(max(rr.shortlist, k), int(index.ntotal))
    D, I = _search(index, q, n)
    scores = np.full((m, k), -np.inf, np.float32)
    ids = np.full((m, k), -1, np.int64)
    valid = I >= 0
    if not valid.any():
        return scores, ids
    uniq, inv = np.unique(I[valid], return_inverse=True)
    X = vectors(uniq)
    local = np.zeros(I.shape, np.int64)
    local[valid] = inv
    if valid.all():
        finals = list(kreciprocal_rerank(q, X, local, rr))
    else:  # shortlists of different lengths (a query with fewer results than asked)
        finals = [
            kreciprocal_rerank(q[r : r + 1], X, local[r : r + 1, valid[r]], rr)[0]
            if valid[r].any()
            else None
            for r in range(m)
        ]
    for r, final in enumerate(finals):
        if final is None:
            continue
        got = I[r, valid[r]]
        o = np.lexsort((got, final))[:k]
        scores[r, : len(o)] = 1.0 - final[o]
        ids[r, : len(o)] = got[o]
    return scores, ids

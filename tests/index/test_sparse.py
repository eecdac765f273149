"""The inverted index returns exactly what a brute-force sparse dot product returns (ties
by id included), through adds, deletes, compaction, save and load."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from cbir.errors import CbirError
from cbir.index.sparse import SparseIndex, make_sparse_index


def _codes(n: int, dim: int, density: float, seed: int, low: int = 0) -> sp.csr_matrix:
    """Integer-valued sparse rows: sums are exact in float32, so many scores tie."""
    rng = np.random.default_rng(seed)
    m = sp.random(
        n, dim, density=density, random_state=seed, data_rvs=lambda k: rng.integers(low, 4, k) + 0.0
    )
    m = m.tocsr().astype(np.float32)
    m.eliminate_zeros()
    return m


def brute_force(
    q: sp.csr_matrix, X: sp.csr_matrix, ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Dense float64 scores of every item, ordered by (score desc, id asc)."""
    S = q.toarray().astype(np.float64) @ X.toarray().astype(np.float64).T
    order = np.stack([np.lexsort((ids, -row))[:k] for row in S])
    return np.take_along_axis(S, order, axis=1), ids[order]


def _check(index: SparseIndex, q, X, ids, k):
    D, I = index.search(q, k)
    want_d, want_i = brute_force(q, X, ids, min(k, len(ids)))
    assert np.array_equal(I[:, : want_i.shape[1]], want_i)
    assert np.array_equal(D[:, : want_d.shape[1]], want_d.astype(np.float32))
    assert (I[:, want_i.shape[1] :] == -1).all()


@pytest.mark.parametrize("low", [0, -2])  # non-negative codes, and signed ones
def test_search_equals_brute_force_with_ties(low):
    X = _codes(800, 96, 0.04, seed=1, low=low)
    ids = np.random.default_rng(2).permutation(100_000)[:800].astype(np.int64)  # not sorted
    index = SparseIndex(96)
    index.add_with_ids(X[:500], ids[:500])
    index.add_with_ids(X[500:], ids[500:])
    q = _codes(60, 96, 0.08, seed=3, low=low)
    D, _ = index.search(q, 50)
    assert (np.diff(D, axis=1) == 0).sum() > 100  # the case is full of ties
    for k in (1, 10, 50, 800, 1000):  # k beyond the candidates: score-0 items fill by id
        _check(index, q, X, ids, k)


def test_delete_compact_save_load(tmp_path):
    X = _codes(600, 64, 0.05, seed=4)
    ids = np.arange(10, 610, dtype=np.int64)
    index = SparseIndex(64)
    index.add_with_ids(X, ids)
    q = _codes(40, 64, 0.1, seed=5)
    gone = ids[::9]
    assert index.remove_ids(np.concatenate([gone, [99_999]])) == len(gone)
    keep = ~np.isin(ids, gone)
    assert index.ntotal == keep.sum() and len(index.rows().indptr) == 601  # tombstones only
    _check(index, q, X[keep], ids[keep], 25)
    with pytest.raises(ValueError, match="twice"):
        index.add_with_ids(X[1:2], ids[1:2])
    index.add_with_ids(X[:1], gone[:1])  # a deleted id may come back with a new code
    keep[0] = True
    _check(index, q, X[keep], ids[keep], 25)
    assert np.array_equal(index.codes(ids[keep][5:8]).toarray(), X[keep][5:8].toarray())
    index.remove_ids(ids[keep][::3])  # past a quarter dead: compacted
    keep2 = keep.copy()
    keep2[np.flatnonzero(keep)[::3]] = False
    assert index.rows().shape[0] == index.ntotal == keep2.sum()
    _check(index, q, X[keep2], ids[keep2], 25)
    path = index.save(tmp_path / "index-1.sidx")
    loaded = SparseIndex.load(path)
    assert set(loaded.ids().tolist()) == set(ids[keep2].tolist())
    _check(loaded, q, X[keep2], ids[keep2], 25)
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, nothing left behind


def test_empty_and_errors(tmp_path):
    index = make_sparse_index("Inverted", 16)
    D, I = index.search(np.zeros((2, 16), np.float32), 3)
    assert (I == -1).all() and np.isinf(D).all()
    with pytest.raises(CbirError, match="Inverted"):
        make_sparse_index("HNSW32", 16)
    with pytest.raises(ValueError, match="dimensions"):
        index.add_with_ids(np.ones((1, 8), np.float32), np.array([1]))
    bad = tmp_path / "index-2.sidx"
    bad.write_bytes(b"not an index")
    with pytest.raises(CbirError, match="index-2.sidx"):
        SparseIndex.load(bad)

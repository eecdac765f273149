"""Multi-index hashing (Norouzi et al. 2012) returns exactly what a brute-force scan returns.

Codes: sign random projections of the scikit-learn digits (real 8x8 scans, shipped with
scikit-learn), which cluster by class and tie a lot, and uniform random codes.
"""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from cbir.index.mih import HAVE_NUMBA, MultiIndexHash, default_m

BACKENDS = [
    "numpy",
    pytest.param("numba", marks=pytest.mark.skipif(not HAVE_NUMBA, reason="numba")),
]


def digit_codes(bits: int, seed: int = 0) -> np.ndarray:
    """LSH codes (sign of random projections) of the centred digit images, packed like faiss."""
    x = load_digits().data.astype(np.float32)
    x -= x.mean(axis=0)
    w = np.random.default_rng(seed).normal(size=(x.shape[1], bits)).astype(np.float32)
    return np.packbits(x @ w >= 0, axis=1, bitorder="little")


def random_codes(n: int, bits: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, bits // 8), dtype=np.uint8)


def brute(db: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int):
    """Reference: every distance by unpacked bits; order by (distance, id, insertion)."""
    a = np.unpackbits(db, axis=1).astype(bool)
    b = np.unpackbits(queries, axis=1).astype(bool)
    dist = (a[None, :, :] != b[:, None, :]).sum(axis=2)
    D = np.full((len(queries), k), np.iinfo(np.int32).max, np.int64)
    I = np.full((len(queries), k), -1, np.int64)
    for i, d in enumerate(dist):
        o = np.lexsort((np.arange(len(ids)), ids, d))[:k]
        D[i, : len(o)] = d[o]
        I[i, : len(o)] = ids[o]
    return D, I, dist


def assert_exact(index: MultiIndexHash, db, ids, queries, ks=(1, 10, 37)):
    for k in ks:
        D, I = index.search(queries, k)
        Dr, Ir, _ = brute(db, ids, queries, k)
        np.testing.assert_array_equal(D, Dr)
        np.testing.assert_array_equal(I, Ir)
        assert D.dtype == np.int32 and I.dtype == np.int64


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "bits,m",
    [
        (16, None),
        (16, 1),
        (16, 3),
        (32, 2),
        (32, 5),
        (64, None),
        (64, 3),
        (64, 5),
        (128, 6),
        (128, 9),
    ],
)
@pytest.mark.parametrize("data", ["digits", "random"])
def test_knn_equals_brute_force(backend, bits, m, data):
    codes = digit_codes(bits) if data == "digits" else random_codes(1500, bits)
    db, queries = codes[:-40], codes[-40:]
    ids = np.random.default_rng(1).permutation(10 * len(db))[: len(db)].astype(np.int64)
    # digits: never fall back to a scan, so the hash-table probing is what is tested;
    # random codes are far apart (probing to large radii): a large but finite budget
    budget = np.inf if data == "digits" else 1000.0
    index = MultiIndexHash(bits, m, backend=backend, scan_fraction=budget)
    index.add(db, ids)
    if m is not None:
        assert index.m == m
    if m in (3, 5, 9):  # substrings of unequal lengths
        assert len(set(index.substring_lengths)) == 2
        assert sum(index.substring_lengths) == bits
    assert_exact(index, db, ids, queries, ks=(1, 10, 37))
    # a query equal to stored codes, with duplicates in the database (distance-0 ties)
    assert_exact(index, db, ids, db[:5])
    # k larger than the collection: everything, padded
    index.scan_fraction = 1.0
    assert_exact(index, db, ids, queries[:5], ks=(len(db) + 5,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_scan_fallback_is_exact(backend):
    db, queries = random_codes(3000, 64), random_codes(20, 64, seed=5)
    ids = np.arange(len(db), dtype=np.int64)
    index = MultiIndexHash(64, 3, backend=backend, scan_fraction=0.01)
    index.add(db, ids)
    assert_exact(index, db, ids, queries)


@pytest.mark.parametrize("backend", BACKENDS)
def test_add_and_remove(backend):
    codes = digit_codes(32, seed=3)
    rng = np.random.default_rng(2)
    ids = rng.permutation(len(codes)).astype(np.int64) * 3
    queries = codes[rng.choice(len(codes), 25, replace=False)]
    index = MultiIndexHash(32, 3, backend=backend, pending_limit=300, scan_fraction=np.inf)
    # batches: some rebuild the tables, the last stays pending (scanned linearly)
    for lo, hi in [(0, 700), (700, 1200), (1200, 1400), (1400, 1797)]:
        index.add(codes[lo:hi], ids[lo:hi])
        assert_exact(index, codes[:hi], ids[:hi], queries, ks=(1, 10))
    assert index.ntotal == len(codes)
    # a few removals: tombstones
    gone = ids[::10]
    assert index.remove_ids(np.concatenate([gone, [-7]])) == len(gone)
    keep = ~np.isin(ids, gone)
    assert sorted(index.ids()) == sorted(ids[keep])
    assert_exact(index, codes[keep], ids[keep], queries, ks=(1, 10, 2000))
    # many removals: compaction by a rebuild
    gone2 = ids[keep][::2]
    index.remove_ids(gone2)
    keep &= ~np.isin(ids, gone2)
    assert index.ntotal == keep.sum()
    assert_exact(index, codes[keep], ids[keep], queries, ks=(1, 10))
    # removed ids can come back (an updated image)
    index.add(codes[:5], ids[:5])
    both = np.concatenate([codes[keep], codes[:5]])
    both_ids = np.concatenate([ids[keep], ids[:5]])
    assert_exact(index, both, both_ids, queries, ks=(1, 10))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bits,m", [(16, 3), (64, None), (64, 3), (128, 5)])
def test_range_search_equals_brute_force(backend, bits, m):
    codes = digit_codes(bits, seed=4)
    db, queries = codes[:-30], codes[-30:]
    ids = np.arange(len(db), dtype=np.int64)[::-1].copy()
    index = MultiIndexHash(bits, m, backend=backend, scan_fraction=np.inf, pending_limit=100)
    index.add(db[:-50], ids[:-50])
    index.rebuild()
    index.add(db[-50:], ids[-50:])  # pending codes are searched too
    index.remove_ids(ids[:7])
    live = ~np.isin(ids, ids[:7])
    _, _, dist = brute(db[live], ids[live], queries, 1)
    for radius in (0, 1, 3, bits // 8, bits // 4):
        lims, D, I = index.range_search(queries, radius)
        for i in range(len(queries)):
            sel = np.flatnonzero(dist[i] <= radius)
            o = sel[np.lexsort((ids[live][sel], dist[i][sel]))]
            np.testing.assert_array_equal(I[lims[i] : lims[i + 1]], ids[live][o])
            np.testing.assert_array_equal(D[lims[i] : lims[i + 1]], dist[i][o])


@pytest.mark.parametrize("backend", BACKENDS)
def test_save_load_round_trip(tmp_path, backend):
    codes = digit_codes(64, seed=6)
    ids = np.arange(len(codes), dtype=np.int64) + 100
    index = MultiIndexHash(64, 5, backend=backend)
    index.add(codes, ids)
    index.remove_ids(ids[:3])
    path = index.save(tmp_path / "mih.npz")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    again = MultiIndexHash.load(path, backend=backend)
    assert again.m == 5 and again.ntotal == index.ntotal
    np.testing.assert_array_equal(again.ids(), index.ids())
    np.testing.assert_array_equal(again.codes(), codes[3:])
    for k in (1, 10):
        for a, b in zip(index.search(codes[:20], k), again.search(codes[:20], k), strict=True):
            np.testing.assert_array_equal(a, b)


def test_default_m_follows_the_paper_scaled():
    assert default_m(64, 2**20) == 4  # m ~ 1.25 bits / log2(n)
    assert default_m(64, 2**16) == 5
    assert default_m(128, 2**16) == 10
    assert default_m(64, 10) >= 2  # substrings of at most 32 bits
    assert default_m(256, 0) == 8


def test_empty_index_and_bad_input():
    index = MultiIndexHash(32)
    D, I = index.search(random_codes(3, 32), 4)
    assert (I == -1).all() and D.shape == (3, 4)
    lims, D, I = index.range_search(random_codes(3, 32), 5)
    assert lims.tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="multiple of 8"):
        MultiIndexHash(30)
    with pytest.raises(ValueError, match="at most 32 bits"):
        MultiIndexHash(128, 2)
    with pytest.raises(ValueError, match="4 bytes"):
        index.add(random_codes(3, 64))
    with pytest.raises(ValueError, match="ids"):
        index.add(random_codes(3, 32), np.arange(2))


@pytest.mark.parametrize("backend", BACKENDS)
def test_ids_in_position_order_stay_exact_with_many_ties(backend):
    """Ids that never decrease with position let a search stop reading a bucket early;
    codes replicated with few bit flips (many exact ties, as learned codes give), equal
    ids, appended (pending) codes and removals must still give the brute-force answer."""
    base = digit_codes(64)[:300]
    rng = np.random.default_rng(3)
    reps = np.tile(base, (6, 1))
    flips = np.packbits(rng.random((len(reps), 64)) < 0.02, axis=1, bitorder="little")
    flips[: len(base)] = 0
    db = reps ^ flips
    ids = np.sort(rng.integers(0, 3 * len(db), len(db))).astype(np.int64)  # sorted, some equal
    queries = np.concatenate([base[::15], db[-20:]])
    index = MultiIndexHash(64, 3, backend=backend, pending_limit=10_000)
    index.add(db[:1500], ids[:1500])
    index.rebuild()
    index.add(db[1500:], ids[1500:])  # pending: scanned, not in the tables
    assert index._ordered and index._n_indexed == 1500
    assert_exact(index, db, ids, queries)
    gone = ids[::7]
    index.remove_ids(gone)
    keep = ~np.isin(ids, gone)
    assert_exact(index, db[keep], ids[keep], queries)
    index.add(db[:5], ids[:5])  # smaller ids after larger ones: no longer ordered
    assert not index._ordered
    db2, ids2 = np.concatenate([db[keep], db[:5]]), np.concatenate([ids[keep], ids[:5]])
    assert_exact(index, db2, ids2, queries)

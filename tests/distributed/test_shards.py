"""Shards by id range, searched together: equal to the unsharded index, ties included."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

from cbir.cli import main
from cbir.errors import CbirError
from cbir.index.backends.shards import ShardedIndex, exact_topk, merge_topk
from cbir.index.store import IndexStore
from cbir.search.searcher import Searcher
from tests.distributed.conftest import faiss_reference


def brute_force(
    scores: np.ndarray, ids: np.ndarray, k: int, binary: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Canonical top-k of a full score matrix: best score first, ties by ascending id."""
    out_s, out_i = [], []
    for row in scores:
        order = np.lexsort((ids, row if binary else -row))[:k]
        out_s.append(row[order])
        out_i.append(ids[order])
    return np.array(out_s), np.array(out_i)


def tied_float_data(n: int = 600, d: int = 12, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Small-integer vectors (inner products exact in float32) with many duplicates."""
    rng = np.random.default_rng(seed)
    base = rng.integers(-2, 3, (n // 3, d)).astype(np.float32)
    x = np.concatenate([base, base, base[rng.permutation(len(base))]])
    ids = rng.choice(10_000, size=len(x), replace=False).astype(np.int64)
    return x, ids


@pytest.mark.parametrize("n_shards", [1, 2, 5, 7])
@pytest.mark.parametrize("nq", [7, 40])  # below and above faiss's BLAS threshold (20)
def test_float_shards_equal_brute_force_with_ties(tmp_path, n_shards, nq):
    x, ids = tied_float_data()
    sh = ShardedIndex.build(tmp_path / "s", ids, x, n_shards=n_shards)
    q = x[:nq]
    k = 25
    s, i = sh.search(q, k)
    ref_s, ref_i = brute_force(q @ x.T, ids, k, binary=False)
    assert np.array_equal(i, ref_i) and np.array_equal(s, ref_s)
    # the unsharded faiss index, read canonically, is the same
    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(x.shape[1]))
    flat.add_with_ids(x, ids)
    us, ui = exact_topk(flat, q, k)
    assert np.array_equal(ui, i) and np.array_equal(us, s)


@pytest.mark.parametrize("n_shards", [1, 3, 6])
def test_binary_shards_equal_brute_force_with_ties(tmp_path, n_shards):
    rng = np.random.default_rng(2)
    codes = rng.integers(0, 256, (300, 2), dtype=np.uint8)  # 16 bits: Hamming ties everywhere
    codes = np.concatenate([codes, codes[:100]])
    ids = rng.permutation(5000)[: len(codes)].astype(np.int64)
    sh = ShardedIndex.build(tmp_path / "b", ids, codes, kind="binary", n_shards=n_shards)
    q = codes[:30]
    d, i = sh.search(q, 40)
    ham = np.unpackbits(q[:, None, :] ^ codes[None, :, :], axis=2).sum(2)
    ref_d, ref_i = brute_force(ham, ids, 40, binary=True)
    assert np.array_equal(i, ref_i) and np.array_equal(d, ref_d)


def test_real_features_sharded_equal_unsharded_index(tmp_path, crops_index):
    index, ids, vecs = faiss_reference(crops_index)
    store = IndexStore.open(crops_index)
    try:
        sh = ShardedIndex.from_store(store, tmp_path / "s", n_shards=4)
    finally:
        store.close()
    assert sh.ntotal == len(ids) and len(sh.shards) == 4
    assert sum(s.n for s in sh.shards) == len(ids)
    k = 12
    s, i = sh.search(vecs, k)
    us, ui = exact_topk(index, vecs, k)
    assert np.array_equal(i, ui)
    np.testing.assert_allclose(s, us, atol=1e-6)
    # and the raw faiss answer has the same scores; its ids differ only inside exact ties
    rs, ri = index.search(vecs, k)
    np.testing.assert_allclose(rs, s, atol=1e-6)
    for r in range(len(vecs)):
        for score in np.unique(s[r]):
            if score != s[r, -1]:  # a tie group cut at k may pick different members
                assert set(ri[r][rs[r] == score]) == set(i[r][s[r] == score])
    # reopened from disk: the same answers
    s2, i2 = ShardedIndex.open(tmp_path / "s").search(vecs, k)
    assert np.array_equal(i2, i) and np.array_equal(s2, s)


def test_add_and_remove_route_by_id_range(tmp_path):
    x, ids = tied_float_data(seed=3)
    first = ids < 6000
    sh = ShardedIndex.build(tmp_path / "s", ids[first], x[first], n_shards=3)
    sh.add(ids[~first], x[~first])
    gone = ids[::7]
    assert sh.remove(gone) == len(gone)
    keep = ~np.isin(ids, gone)
    ref = ShardedIndex.build(tmp_path / "r", ids[keep], x[keep], n_shards=1)
    q = x[:30]
    s, i = ShardedIndex.open(tmp_path / "s").search(q, 20)
    rs, ri = ref.search(q, 20)
    assert np.array_equal(i, ri) and np.array_equal(s, rs)
    owner = sh.shard_of(ids[keep])
    for j, shard in enumerate(sh.shards):
        assert np.all((ids[keep][owner == j] >= shard.lo) & (ids[keep][owner == j] <= shard.hi))


def test_merge_topk_handles_short_lists():
    a = (np.array([[0.9, 0.5, -np.inf]], np.float32), np.array([[3, 8, -1]]))
    b = (np.array([[0.9, 0.7, 0.1]], np.float32), np.array([[1, 4, 9]]))
    s, i = merge_topk([a, b], 5, binary=False)
    assert i.tolist() == [[1, 3, 4, 8, 9]]
    assert s[0].tolist() == pytest.approx([0.9, 0.9, 0.7, 0.5, 0.1])


def test_cli_shard_and_search_through_shards(tmp_path, crops_index, crops_dir, capsys):
    out = tmp_path / "shards"
    assert main(["shard", str(crops_index), "--out", str(out), "--shards", "3", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert len(info["shards"]) == 3 and info["total"] == sum(s["n"] for s in info["shards"])
    q = sorted(crops_dir.glob("*.jpg"))[3]
    assert (
        main(["search", str(crops_index), str(q), "-k", "6", "--json", "--store", f"shards:{out}"])
        == 0
    )
    sharded = json.loads(capsys.readouterr().out)["results"]
    s = Searcher(crops_index)
    try:
        local = s.search_file(q, k=6)
    finally:
        s.close()
    assert [h["score"] for h in sharded] == pytest.approx([h.score for h in local], abs=1e-6)
    assert sharded[0]["path"] == str(q)


def test_stale_shards_are_refused(tmp_path, crops_index):
    idx = tmp_path / "idx"
    shutil.copytree(crops_index, idx)
    store = IndexStore.open(idx)
    try:
        ShardedIndex.from_store(store, tmp_path / "s", n_shards=2)
        store.delete([store.rows()[0]["id"]])
    finally:
        store.close()
    with pytest.raises(CbirError, match="generation"):
        Searcher(idx, backend=f"shards:{tmp_path / 's'}")
    with pytest.raises(CbirError, match="no shards.json"):
        ShardedIndex.open(Path(tmp_path / "nothing"))

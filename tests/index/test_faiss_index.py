import numpy as np
import pytest

from cbir.index.faiss_index import index_ids, make_float_index, set_search_params, try_remove


@pytest.mark.parametrize("spec", ["Flat", "IVF4,Flat", "IVF4,PQ4x4", "HNSW8"])
def test_ids_survive_add_and_remove(spec):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(300, dtype=np.int64) * 7 + 5
    index = make_float_index(spec, 16)
    if not index.is_trained:
        index.train(x)
    index.add_with_ids(x, ids)
    set_search_params(index, nprobe=4, ef_search=300)
    assert sorted(index_ids(index)) == sorted(ids)
    removed = ids[::3]
    ok = try_remove(index, removed)
    assert ok == (spec != "HNSW8")  # HNSW cannot remove: the store rebuilds instead
    if not ok:
        return
    keep = np.setdiff1d(ids, removed)
    assert sorted(index_ids(index)) == sorted(keep)
    # every returned id is a live id, and the exact ones return exactly what brute force does
    D, I = index.search(x[:20], 10)
    assert np.isin(I, keep).all()
    if spec in ("Flat", "IVF4,Flat"):
        live = x[(keep - 5) // 7]
        ref = np.argsort(-(x[:20] @ live.T), axis=1)[:, :10]
        np.testing.assert_array_equal(I, keep[ref])

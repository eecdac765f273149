"""milvus-lite end to end: float and binary search equal faiss's exact results on the same data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from cbir.cli import main  # noqa: E402
from cbir.errors import CbirError  # noqa: E402
from cbir.index.backends.milvus import (  # noqa: E402
    MilvusStore,
    filter_expr,
    milvus_index,
    open_for_store,
)
from cbir.index.backends.shards import exact_topk  # noqa: E402
from cbir.index.store import IndexStore  # noqa: E402
from cbir.search.searcher import Searcher  # noqa: E402
from cbir.unsupervised.lsh import LSH  # noqa: E402
from tests.distributed.conftest import faiss_reference  # noqa: E402


@pytest.fixture(scope="module")
def lite(tmp_path_factory) -> str:
    """One milvus-lite file for the module (each client starts a milvus-lite server)."""
    return str(tmp_path_factory.mktemp("milvus") / "cbir.db")


def rows_of(index_dir: Path) -> dict[int, dict]:
    store = IndexStore.open(index_dir)
    try:
        return {r["id"]: dict(r) for r in store.rows()}
    finally:
        store.close()


def test_float_search_equals_faiss_exact(lite, crops_index):
    index, ids, vecs = faiss_reference(crops_index)
    store = IndexStore.open(crops_index)
    try:
        with open_for_store(f"milvus:{lite}#float_e2e", store) as m:
            assert m.sync(store) == {"upserted": len(ids), "deleted": 0, "total": len(ids)}
            assert m.sync(store)["upserted"] == 0  # nothing changed: nothing written
            assert m.count() == len(ids)
            hits = m.search(vecs, k=10)
    finally:
        store.close()
    ref_s, ref_i = exact_topk(index, vecs, 10)
    got_i = np.array([[h.id for h in row] for row in hits])
    got_s = np.array([[h.score for h in row] for row in hits])
    assert np.array_equal(got_i, ref_i)
    np.testing.assert_allclose(got_s, ref_s, atol=1e-5)
    rows = rows_of(crops_index)
    assert all(
        h.path == rows[h.id]["path"] and h.sha256 == rows[h.id]["sha256"]
        for row in hits
        for h in row
    )


def test_binary_codes_equal_faiss_binary_flat(lite, crops_index):
    """LSH codes of the real features: Milvus BIN_FLAT == faiss IndexBinaryFlat, ties included."""
    _, ids, vecs = faiss_reference(crops_index)
    signs = LSH(32, seed=0).fit(vecs).transform(vecs)  # 32 bits: many tied distances
    codes = np.packbits(signs > 0, axis=1, bitorder="little")  # faiss's layout
    paths = [f"/img/{i}.jpg" for i in ids]
    ref = faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(32))
    ref.add_with_ids(codes, ids)
    with MilvusStore(lite, "binary_e2e", kind="binary", dim=32, index_type="BFlat") as m:
        assert m.index.index_type == "BIN_FLAT" and m.index.metric == "HAMMING"
        m.add(ids, codes, paths)
        for k in (1, 5, 17):
            hits = m.search(codes, k=k)
            ref_d, ref_i = exact_topk(ref, codes, k)
            assert np.array_equal(np.array([[h.id for h in r] for r in hits]), ref_i)
            assert np.array_equal(np.array([[h.distance for h in r] for r in hits]), ref_d)
        # the raw faiss answer agrees too (faiss binary flat orders ties by id)
        raw_d, raw_i = ref.search(codes, 17)
        assert np.array_equal(raw_i, ref_i) and np.array_equal(raw_d, ref_d)
        assert hits[0][0].score == pytest.approx(1 - hits[0][0].distance / 32)


def test_ties_past_k_are_resolved_by_id(lite, crops_index):
    _, _, vecs = faiss_reference(crops_index)
    v = np.repeat(vecs[:1], 40, axis=0)  # 40 identical vectors: one tie group of 40
    ids = np.arange(1000, 1040)[::-1].copy()
    with MilvusStore(lite, "ties", kind="float", dim=vecs.shape[1]) as m:
        m.add(ids, v, [str(i) for i in ids])
        hits = m.search(vecs[:1], k=5)[0]
    assert [h.id for h in hits] == [1000, 1001, 1002, 1003, 1004]


def test_filters_add_and_delete(lite, crops_index, tmp_path):
    idx = tmp_path / "idx"
    shutil.copytree(crops_index, idx)
    store = IndexStore.open(idx)
    try:
        rows = store.rows()
        cats = [r["id"] for r in rows[::3]]
        for i in cats:
            store.set_tags(i, "cat,50%_off")
        with open_for_store(f"milvus:{lite}#filters", store) as m:
            m.sync(store)
            _, ids, vecs = faiss_reference(idx)
            # tag filter == exact search over the tagged subset
            sel = np.isin(ids, cats)
            sub = faiss.IndexIDMap2(faiss.IndexFlatIP(vecs.shape[1]))
            sub.add_with_ids(vecs[sel], ids[sel])
            hits = m.search(vecs[:6], k=4, tags=["CAT"])
            assert np.array_equal(
                [[h.id for h in r] for r in hits], exact_topk(sub, vecs[:6], 4)[1]
            )
            assert all(h.tags == "cat,50%_off" for r in hits for h in r)
            assert m.search(vecs[:1], k=3, tags=["50%_off"])[0]  # % and _ are literal
            assert not m.search(vecs[:1], k=3, tags=["50"])[0]  # whole tags only
            # path prefix filter
            sub_dir = str(Path(rows[0]["path"]).parent.parent / "sub") + "/"
            assert all(
                h.path.startswith(sub_dir) for h in m.search(vecs[:4], k=5, path_prefix=sub_dir)[0]
            )
            # delete in the index, sync: Milvus follows
            gone = [r["id"] for r in rows[:5]]
            store.delete(gone)
            assert m.sync(store) == {"upserted": 0, "deleted": 5, "total": len(rows) - 5}
            index, ids, vecs = faiss_reference(idx)
            hits = m.search(vecs, k=8)
            assert np.array_equal([[h.id for h in r] for r in hits], exact_topk(index, vecs, 8)[1])
            assert not m.search(vecs, k=3, expr=filter_expr(ids=gone))[0]
    finally:
        store.close()


def test_cli_index_and_search_against_milvus(lite, photos_dir, tmp_path, capsys):
    idx = tmp_path / "idx"
    spec = f"milvus:{lite}#cli"
    assert main(["index", str(photos_dir), "--index", str(idx), "--store", spec, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["store"]["upserted"] == d["total"] and d["store"]["deleted"] == 0
    for q in sorted(photos_dir.rglob("*.*"))[:4]:
        assert main(["search", str(idx), str(q), "-k", "5", "--json", "--store", spec]) == 0
        milvus = json.loads(capsys.readouterr().out)["results"]
        assert main(["search", str(idx), str(q), "-k", "5", "--json"]) == 0
        local = json.loads(capsys.readouterr().out)["results"]
        assert [h["id"] for h in milvus] == [h["id"] for h in local]
        assert [h["score"] for h in milvus] == pytest.approx([h["score"] for h in local], abs=1e-5)
        assert milvus[0]["path"] == str(q)
    s = Searcher(idx, backend=spec)
    try:
        first = s.search_id(1, k=3)
    finally:
        s.close()
    local = Searcher(idx)
    try:
        assert [h.id for h in first] == [h.id for h in local.search_id(1, k=3)]
    finally:
        local.close()


def test_clear_errors(lite, crops_index):
    with pytest.raises(CbirError, match="no HNSW index"):
        MilvusStore(lite, "hnsw", kind="float", dim=8, index_type="HNSW32")
    with MilvusStore(lite, "kinds", kind="float", dim=8):
        pass
    with pytest.raises(CbirError, match="holds float vectors of 8"):
        MilvusStore(lite, "kinds", kind="binary", dim=64)
    with pytest.raises(CbirError, match="no collection"):
        MilvusStore(lite, "missing")
    assert milvus_index("HNSW32", "float").params["M"] == 32
    assert milvus_index("IVF256,Flat", "float").search_params == {"nprobe": 32}
    assert milvus_index("BIVF64", "binary").index_type == "BIN_IVF_FLAT"
    with pytest.raises(CbirError, match="no Milvus equivalent"):
        milvus_index("LSH", "float")

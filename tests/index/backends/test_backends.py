"""open_backend parses specs (and refuses bad ones clearly); every backend answers like
the index's own file, ``where`` filters included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cbir.cli import main
from cbir.errors import CbirError
from cbir.index.backends import open_backend, parse_spec
from cbir.index.backends.local import LocalBackend
from cbir.index.backends.shards import ShardBackend, ShardedIndex
from cbir.index.store import IndexStore
from cbir.search.searcher import Searcher


def test_parse_spec():
    assert parse_spec(None) == ("local", "")
    assert parse_spec("local") == ("local", "")
    assert parse_spec("shards:/data/s") == ("shards", "/data/s")
    assert parse_spec("milvus:http://h:19530#c") == ("milvus", "http://h:19530#c")
    with pytest.raises(CbirError, match="expected local, shards:DIR or milvus:URI"):
        parse_spec("redis://x")
    with pytest.raises(CbirError, match="shards: needs a shard directory"):
        parse_spec("shards:")
    with pytest.raises(CbirError, match="milvus: needs a URI"):
        parse_spec("milvus:")


def test_open_backend_kinds_and_refusals(tmp_path):
    assert isinstance(open_backend(None), LocalBackend)
    assert isinstance(open_backend("shards:" + str(tmp_path)), ShardBackend)
    with pytest.raises(CbirError, match="--tag needs --store milvus:URI"):
        open_backend("local", tags=["cat"])
    with pytest.raises(CbirError, match="--tag needs --store milvus:URI"):
        open_backend(f"shards:{tmp_path}", tags=["cat"])
    with pytest.raises(CbirError, match="expected local"):
        open_backend("faiss:/x")


@pytest.fixture(scope="module")
def photo_index(photos_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    idx = tmp_path_factory.mktemp("backends") / "idx"
    assert main(["index", str(photos_dir), "--index", str(idx), "--json"]) == 0
    return idx


def answers(s: Searcher, k: int, where: str | None = None) -> list[list[tuple[int, float]]]:
    ids = [r["id"] for r in s.store.rows()]
    feats = s.store.features(ids)
    return [[(h.id, h.score) for h in hits] for hits in s.search_features(feats, k, where)]


def test_local_and_shards_answer_alike_with_and_without_where(photo_index, tmp_path, capsys):
    store = IndexStore.open(photo_index)
    try:
        ShardedIndex.from_store(store, tmp_path / "sh", n_shards=3)
        n = store.count()
        cut = sorted(r["id"] for r in store.rows())[n // 2]
    finally:
        store.close()
    local = Searcher(photo_index)
    sharded = Searcher(photo_index, backend=f"shards:{tmp_path / 'sh'}")
    try:
        assert local.local and not sharded.local and sharded._index is None
        for where in (None, f"id < {cut}"):
            a, b = answers(local, 5, where), answers(sharded, 5, where)
            assert [[i for i, _ in r] for r in a] == [[i for i, _ in r] for r in b]
            assert np.allclose(
                [s for r in a for _, s in r], [s for r in b for _, s in r], atol=1e-6
            )
            if where:
                assert all(i < cut for r in b for i, _ in r)
                assert all(len(r) == min(5, n // 2) for r in b)
    finally:
        local.close()
        sharded.close()


def test_rerank_needs_the_local_backend(photo_index, tmp_path):
    store = IndexStore.open(photo_index)
    try:
        ShardedIndex.from_store(store, tmp_path / "sh", n_shards=2)
    finally:
        store.close()
    with pytest.raises(CbirError, match="re-ranking works on the index itself"):
        Searcher(photo_index, rerank=object(), backend=f"shards:{tmp_path / 'sh'}")

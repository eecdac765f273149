"""Library-level add and delete (cbir.ops) on a real index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from cbir import ops
from cbir.errors import CbirError, ImageError
from cbir.index.store import IndexStore
from cbir.search.searcher import Searcher
from cbir.service.app import create_app
from tests.service.conftest import KEY, TEST_HOSTS, flipped, photo


def test_normalize_tags():
    assert ops.normalize_tags(" Cat, dog,,cat , ") == "cat,dog"
    assert ops.normalize_tags(["B", "a", "b"]) == "b,a"
    assert ops.normalize_tags(None) == "" and ops.normalize_tags("") == ""
    assert ops.tag_set("cat,dog") == {"cat", "dog"} and ops.tag_set("") == set()
    with pytest.raises(CbirError, match="at most 64"):
        ops.normalize_tags("x" * 65)
    with pytest.raises(CbirError, match="printable"):
        ops.normalize_tags("tab\there")
    with pytest.raises(CbirError, match="at most 32"):
        ops.normalize_tags([f"t{i}" for i in range(33)])


def test_add_image_bytes_embeds_stores_and_is_idempotent(index_copy, photos_dir):
    data = flipped(photo(photos_dir, "astronaut"), "JPEG")
    a = ops.add_image_bytes(index_copy, data, "astro.jpg", "Space")
    assert a.created and Path(a.path) == ops.uploads_dir(index_copy) / f"{a.sha256}.jpg"
    assert Path(a.path).read_bytes() == data
    store = IndexStore.open(index_copy)
    row = store.row(a.id)
    assert (row["width"], row["height"], row["tags"], row["size"]) == (512, 512, "space", len(data))
    assert '"imagenet"' in row["extra"] and '"astro.jpg"' in row["extra"]
    assert store.get_meta("faiss")["gen"] == store.generation  # the search index is up to date
    store.close()
    b = ops.add_image_bytes(index_copy, data, "again.jpg")
    assert (b.id, b.created) == (a.id, False)
    s = Searcher(index_copy)
    hits = s.search_features(s.embed_bytes(data), k=2)[0]
    s.close()
    assert hits[0].id == a.id and Path(hits[1].path).stem == "astronaut"


def test_add_refuses_a_non_image_and_writes_nothing(index_copy):
    with pytest.raises(ImageError) as e:
        ops.add_image_bytes(index_copy, b"<html>not an image</html>", "page.jpg")
    assert e.value.reason == "not-an-image"
    assert not ops.uploads_dir(index_copy).exists()
    store = IndexStore.open(index_copy)
    assert store.count() == 13 and store.generation == 1
    store.close()


def test_delete_ids_removes_rows_and_upload_files(index_copy, photos_dir):
    a = ops.add_image_bytes(index_copy, flipped(photo(photos_dir, "coins"), "JPEG"), "c.jpg")
    store = IndexStore.open(index_copy)
    first = store.rows()[0]
    store.close()
    assert ops.delete_ids(index_copy, [a.id, first["id"], 12345]) == [a.id, first["id"]]
    assert not Path(a.path).exists() and Path(first["path"]).exists()
    assert ops.delete_ids(index_copy, [a.id]) == []
    s = Searcher(index_copy)
    ids = {h.id for h in s.search_features(np.ones((1, 1280), np.float32), k=50)[0]}
    s.close()
    assert len(ids) == 12 and a.id not in ids and first["id"] not in ids


def test_a_busy_index_is_refused_after_waiting(index_copy, photos_dir):
    holder = IndexStore.open(index_copy)
    holder.lock()  # another writer (e.g. `cbir index`) holds the index
    try:
        with pytest.raises(ops.IndexBusyError, match="another writer"):
            ops.delete_ids(index_copy, [1], wait_s=0.2)
        with TestClient(
            create_app(index_copy, api_key=KEY, write_wait_s=0.2, allowed_hosts=TEST_HOSTS)
        ) as c:
            r = c.post(
                "/images",
                files={"file": ("x.jpg", flipped(photo(photos_dir, "coins"), "JPEG"))},
                headers={"X-API-Key": KEY},
            )
            assert (
                r.status_code == 503
                and r.json()["reason"] == "busy"
                and r.headers["retry-after"] == "5"
            )
            assert c.get("/search", params={"id": 1}).status_code == 200  # reads go on
    finally:
        holder.close()
    assert ops.delete_ids(index_copy, [1], wait_s=0.2) == [1]

"""``cbir serve --store``: the HTTP API answers from Milvus (milvus-lite) or from shard files
what it answers from the index's own faiss file."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cbir.distributed.stores import sync_store
from cbir.index.store import IndexStore
from cbir.service.app import create_app

KEY = "serve-store-key-0123456789"
TEST_HOSTS = ["testserver"]  # the Host that TestClient sends


@pytest.fixture
def idx(crops_index: Path, tmp_path: Path) -> Path:
    """A private copy of the crops index, every third image tagged ``cat``."""
    dst = tmp_path / "index"
    shutil.copytree(crops_index, dst)
    store = IndexStore.open(dst)
    try:
        for r in store.rows()[::3]:
            store.set_tags(r["id"], "cat")
    finally:
        store.close()
    return dst


def answers(client: TestClient, ids: list[int], k: int, tag: str | None = None) -> list:
    """Top-``k`` (id, score, path, tags) per query, exact ties ordered by id (as Milvus
    orders them; faiss's order inside a tie is arbitrary): ``k + 4`` are fetched, sorted
    by (score, id), then cut."""
    out = []
    for i in ids:
        params = {"id": i, "k": k + 4, **({"tag": tag} if tag else {})}
        r = client.get("/search", params=params)
        assert r.status_code == 200, r.text
        hits = [(h["id"], round(h["score"], 5), h["path"], h["tags"]) for h in r.json()["results"]]
        out.append(sorted(hits, key=lambda h: (-h[1], h[0]))[:k])
    return out


def ids_of(index_dir: Path) -> list[int]:
    store = IndexStore.open(index_dir)
    try:
        return [r["id"] for r in store.rows()]
    finally:
        store.close()


def test_serve_from_milvus_equals_faiss(idx: Path, tmp_path: Path):
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    spec = f"milvus:{tmp_path / 'm.db'}#serve"
    assert sync_store(str(idx), spec)["upserted"] == len(ids_of(idx))
    queries = ids_of(idx)[::5]
    with TestClient(create_app(idx, allowed_hosts=TEST_HOSTS)) as plain:
        want = answers(plain, queries, 7)
        want_cat = answers(plain, queries, 4, tag="cat")
    with TestClient(create_app(idx, api_key=KEY, store=spec, allowed_hosts=TEST_HOSTS)) as c:
        assert answers(c, queries, 7) == want
        assert answers(c, queries, 4, tag="cat") == want_cat
        # an upload search and an add go through Milvus too
        store = IndexStore.open(idx)
        src = Path(store.row(queries[0])["path"])  # the API gives it relative: the full one
        store.close()
        img = Image.open(src).convert("RGB").transpose(Image.FLIP_TOP_BOTTOM)
        buf = io.BytesIO()
        img.save(buf, "PNG")
        r = c.post(
            "/images",
            files={"file": ("new.png", buf.getvalue(), "image/png")},
            headers={"X-API-Key": KEY},
        )
        assert r.status_code == 201, r.text
        new = r.json()["id"]
        top = c.get(f"/search?id={new}&k=3").json()["results"]
        assert top[0]["id"] == new and top[0]["score"] == pytest.approx(1.0, abs=1e-5)
        r = c.post(
            "/search", files={"file": ("q.png", buf.getvalue(), "image/png")}, data={"k": "2"}
        )
        assert r.status_code == 200 and r.json()["results"][0]["id"] == new
        assert c.delete(f"/images/{new}", headers={"X-API-Key": KEY}).status_code == 200
        assert new not in [
            h["id"] for h in c.get(f"/search?id={queries[0]}&k=60").json()["results"]
        ]
        assert c.get("/health").json()["images"] == len(ids_of(idx))


def test_serve_from_shards_equals_faiss(idx: Path, tmp_path: Path):
    from cbir.index.backends.shards import ShardedIndex

    store = IndexStore.open(idx)
    try:
        ShardedIndex.from_store(store, tmp_path / "shards", n_shards=3)
    finally:
        store.close()
    queries = ids_of(idx)[::4]
    with TestClient(create_app(idx, allowed_hosts=TEST_HOSTS)) as plain:
        want = answers(plain, queries, 9)
    with TestClient(
        create_app(idx, store=f"shards:{tmp_path / 'shards'}", allowed_hosts=TEST_HOSTS)
    ) as c:
        assert answers(c, queries, 9) == want
        assert answers(c, queries[:3], 3, tag="cat") == answers(
            TestClient(create_app(idx, allowed_hosts=TEST_HOSTS)), queries[:3], 3, tag="cat"
        )

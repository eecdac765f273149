"""Issue 16's attacks on the service, each reproduced: feedback as an unauthenticated disk
write, key files with a BOM or non-ASCII text, images swapped after indexing, foreign
``Host`` headers (DNS rebinding), absolute server paths in results, and the URL's ``k``
of an upload search. The memory attack (tiny uploads, huge images) is in test_memory.py."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from cbir.cli.serve import read_api_key
from cbir.errors import CbirError
from cbir.index.store import IndexStore
from cbir.pipeline import index_folder
from cbir.service.app import create_app
from tests.service.conftest import KEY, TEST_HOSTS, flipped, noise_png, photo, serve_subprocess

AUTH = {"X-API-Key": KEY}
FB = {"query": "id:1", "result_id": 2, "relevant": True}


def _feedback_rows(index: Path) -> list:
    store = IndexStore.open(index)
    try:
        return store.feedback()
    finally:
        store.close()


# ---------------------------------------------------------------- 1: feedback
def test_feedback_is_refused_on_a_read_only_server(index_copy: Path):
    with TestClient(create_app(index_copy, allowed_hosts=TEST_HOSTS)) as c:
        r = c.post("/feedback", json=FB)
        assert r.status_code == 403 and r.json()["reason"] == "writes-disabled"
    assert _feedback_rows(index_copy) == []


def test_feedback_needs_the_key(index_copy: Path):
    with TestClient(create_app(index_copy, api_key=KEY, allowed_hosts=TEST_HOSTS)) as c:
        assert c.post("/feedback", json=FB).status_code == 401
        assert c.post("/feedback", json=FB, headers={"X-API-Key": "x" * 20}).status_code == 401
        assert _feedback_rows(index_copy) == []
        assert c.post("/feedback", json=FB, headers=AUTH).status_code == 201
    assert len(_feedback_rows(index_copy)) == 1


def test_feedback_rows_per_query_and_saved_query_bytes_are_bounded(index_copy: Path):
    app = create_app(
        index_copy,
        api_key=KEY,
        allowed_hosts=TEST_HOSTS,
        max_feedback_per_query=3,
        max_query_bytes=100_000,
    )
    with TestClient(app) as c:
        for rid in (2, 3, 4):
            assert (
                c.post("/feedback", json={**FB, "result_id": rid}, headers=AUTH).status_code == 201
            )
        r = c.post("/feedback", json={**FB, "result_id": 5}, headers=AUTH)
        assert r.status_code == 429 and r.json()["reason"] == "feedback-limit"
        assert "3 judgements" in r.json()["error"]
        assert c.post("/feedback", json={**FB, "query": "id:2"}, headers=AUTH).status_code == 201
        # uploads of ~48 KB each: the first two are kept, the third would pass 100 KB
        saved = []
        for seed in range(3):
            q = c.post("/search", files={"file": ("q.png", noise_png(128, seed))}).json()["query"]
            r = c.post("/feedback", json={**FB, "query": q}, headers=AUTH)
            saved.append(r.status_code)
        assert saved == [201, 201, 507], saved
        assert "--max-query-mb" in r.json()["error"] and r.json()["reason"] == "queries-full"
    total = sum(p.stat().st_size for p in (index_copy / "queries").iterdir())
    assert 0 < total <= 100_000
    assert len(_feedback_rows(index_copy)) == 6


# ------------------------------------------------------------- 7: key files
def test_a_key_file_with_a_bom_gives_the_key(tmp_path: Path):
    p = tmp_path / "key"
    p.write_bytes(b"\xef\xbb\xbf  " + KEY.encode() + b"  \r\n")
    p.chmod(0o600)
    assert read_api_key(str(p)) == KEY


def test_a_non_ascii_key_is_refused_in_one_line(tmp_path: Path):
    p = tmp_path / "key"
    p.write_text("clé-secrète-0123456789", encoding="utf-8")
    p.chmod(0o600)
    with pytest.raises(CbirError) as e:
        read_api_key(str(p))
    msg = str(e.value)
    assert "\n" not in msg and "ASCII" in msg and str(p) in msg


def test_serve_with_a_bom_key_file_accepts_writes(index_copy: Path, photos_dir: Path, tmp_path):
    p = tmp_path / "key"
    p.write_bytes(b"\xef\xbb\xbf" + KEY.encode() + b"\n")
    p.chmod(0o600)
    with (
        serve_subprocess(index_copy, "--api-key-file", str(p)) as url,
        httpx.Client(base_url=url, timeout=60) as c,
    ):
        data = flipped(photo(photos_dir, "page"), "JPEG")
        r = c.post("/images", files={"file": ("p.jpg", data)}, headers=AUTH)
        assert r.status_code == 201, r.text


# -------------------------------------------------------- 8: swapped images
@pytest.fixture
def own_photos(tmp_path: Path, photos_dir: Path) -> tuple[Path, Path]:
    """(folder, index) of three photos this test may change."""
    folder = tmp_path / "own"
    folder.mkdir()
    for name in ("horse", "chelsea", "coffee"):
        src = photo(photos_dir, name)
        shutil.copy2(src, folder / src.name)
    idx = tmp_path / "own.idx"
    index_folder(folder, idx, progress=False)
    return folder, idx


def _ids(idx: Path) -> dict[str, tuple[int, Path]]:
    store = IndexStore.open(idx)
    try:
        return {Path(r["path"]).stem: (r["id"], Path(r["path"])) for r in store.rows()}
    finally:
        store.close()


def test_images_changed_since_indexing_are_not_served(own_photos, photos_dir, tmp_path):
    folder, idx = own_photos
    ids = _ids(idx)
    evil = tmp_path / "evil.png"
    evil.write_bytes(b"\x89PNG\r\n\x1a\n" + b"secret data " * 100)
    with TestClient(create_app(idx, allowed_hosts=TEST_HOSTS)) as c:
        hid, hpath = ids["horse"]
        cid, cpath = ids["chelsea"]
        fid, fpath = ids["coffee"]
        assert c.get(f"/images/{hid}").status_code == 200
        # a symlink swapped in, to a file with PNG magic
        hpath.unlink()
        hpath.symlink_to(evil)
        for url in (f"/images/{hid}", f"/thumbs/{hid}"):
            r = c.get(url)
            assert r.status_code == 409 and r.json()["reason"] == "file-changed", url
            assert "cbir index" in r.json()["error"] and b"secret" not in r.content
        # other content written over the file
        cpath.write_bytes(flipped(photo(photos_dir, "chelsea"), "PNG"))
        for url in (f"/images/{cid}", f"/thumbs/{cid}"):
            assert c.get(url).status_code == 409, url
        # the file gone
        fpath.unlink()
        for url in (f"/images/{fid}", f"/thumbs/{fid}"):
            r = c.get(url)
            assert r.status_code == 404 and r.json()["reason"] == "file-unreadable", url


def test_a_touched_file_with_the_same_content_is_still_served(own_photos):
    _, idx = own_photos
    hid, hpath = _ids(idx)["horse"]
    data = hpath.read_bytes()
    st = hpath.stat()
    os.utime(hpath, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    with TestClient(create_app(idx, allowed_hosts=TEST_HOSTS)) as c:
        r = c.get(f"/images/{hid}")
        assert r.status_code == 200 and r.content == data
        assert c.get(f"/thumbs/{hid}").status_code == 200


# ------------------------------------------------------------ 9a: Host header
@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("localhost", True),
        ("localhost:8000", True),
        ("127.0.0.1:8000", True),
        ("[::1]:8000", True),
        ("LOCALHOST", True),
        ("evil.example", False),
        ("localhost.evil.example", False),
        ("127.0.0.1.evil.example:8000", False),
        ("", False),
    ],
)
def test_only_the_bound_host_names_are_answered(base_index: Path, host: str, ok: bool):
    with TestClient(create_app(base_index)) as c:
        for method, url in (("GET", "/health"), ("GET", "/search?id=1&k=2"), ("POST", "/feedback")):
            r = c.request(method, url, headers={"host": host}, json=FB)
            if ok:
                assert r.status_code != 400, (method, url, r.text)
            else:
                assert r.status_code == 400 and r.json()["reason"] == "bad-host", (method, url)
                assert "--allow-host" in r.json()["error"]


def test_allow_host_names_more_hosts(base_index: Path):
    app = create_app(base_index, allowed_hosts=["search.example.org"])
    with TestClient(app) as c:
        assert c.get("/health", headers={"host": "search.example.org:443"}).status_code == 200
        assert c.get("/health", headers={"host": "evil.example"}).status_code == 400


def test_serve_checks_the_host_header(base_index: Path):
    with (
        serve_subprocess(base_index, "--allow-host", "photos.example") as url,
        httpx.Client(base_url=url, timeout=60) as c,
    ):
        assert c.get("/health").status_code == 200  # Host: 127.0.0.1:PORT
        assert c.get("/health", headers={"host": "photos.example"}).status_code == 200
        r = c.get("/health", headers={"host": "rebind.attacker.example"})
        assert r.status_code == 400 and "--allow-host" in r.json()["error"]


# ----------------------------------------------------------- 9b: server paths
def test_results_give_paths_relative_to_the_indexed_folder(base_index: Path, photos_dir: Path):
    with TestClient(create_app(base_index, allowed_hosts=TEST_HOSTS)) as c:
        hits = c.get("/search", params={"id": 1, "k": 13}).json()["results"]
        hits2 = c.post(
            "/search", files={"file": ("q.jpg", photo(photos_dir, "horse").read_bytes())}
        ).json()["results"]
    store = IndexStore.open(base_index)
    full = {r["id"]: r["path"] for r in store.rows()}
    store.close()
    for h in hits + hits2:
        assert not h["path"].startswith("/") and str(photos_dir) not in h["path"], h["path"]
        assert Path(full[h["id"]]) == photos_dir / h["path"]
    assert any(h["path"].startswith("sub/") for h in hits)


def test_an_upload_is_reported_relative_to_the_index(index_copy: Path, photos_dir: Path):
    with TestClient(create_app(index_copy, api_key=KEY, allowed_hosts=TEST_HOSTS)) as c:
        data = flipped(photo(photos_dir, "rocket"), "JPEG")
        added = c.post("/images", files={"file": ("r.jpg", data)}, headers=AUTH).json()
        assert added["path"] == f"uploads/{added['sha256']}.jpg"
        hit = c.get("/search", params={"id": added["id"], "k": 1}).json()["results"][0]
        assert hit["path"] == added["path"]
    assert (index_copy / added["path"]).read_bytes() == data


# ------------------------------------------------------- issue 18.6: URL's k
def test_the_url_k_of_an_upload_search_counts(base_index: Path, photos_dir: Path):
    data = photo(photos_dir, "horse").read_bytes()
    with TestClient(create_app(base_index, allowed_hosts=TEST_HOSTS)) as c:
        body = c.post("/search?k=2", files={"file": ("q.jpg", data)}).json()
        assert body["k"] == 2 and len(body["results"]) == 2
        body = c.post("/search", files={"file": ("q.jpg", data)}, data={"k": "3"}).json()
        assert body["k"] == 3 and len(body["results"]) == 3
        r = c.post("/search?k=2", files={"file": ("q.jpg", data)}, data={"k": "3"})
        assert r.status_code == 422 and "k" in r.json()["error"]
        r = c.post("/search?k=0", files={"file": ("q.jpg", data)})
        assert r.status_code == 422


def test_the_names_a_bind_answers_to():
    import socket

    from cbir.service.guard import AllowedHosts

    loop = AllowedHosts.for_bind("127.0.0.1")
    assert all(loop.allowed(h) for h in ("127.0.0.1:1", "localhost", "[::1]:80"))
    assert not any(loop.allowed(h) for h in ("10.0.0.1", socket.gethostname() + ".evil", None))
    lan = AllowedHosts.for_bind("192.168.7.7", ["photos.lan"])
    assert lan.allowed("192.168.7.7:8000") and lan.allowed("PHOTOS.lan")
    assert not lan.allowed("localhost") and not lan.allowed("10.0.0.1")
    anywhere = AllowedHosts.for_bind("0.0.0.0")
    assert anywhere.allowed("10.1.2.3:8000") and anywhere.allowed("[fe80::1]:8000")
    assert anywhere.allowed(socket.gethostname()) and not anywhere.allowed("evil.example")
    assert AllowedHosts(["*"]).allowed("anything.example")


@pytest.mark.parametrize("bad", ["photos.example:8000", "http://photos.example", "a/b", ""])
def test_a_bad_allow_host_is_refused_in_one_line(base_index: Path, capsys, bad: str):
    from cbir.cli import main

    assert main(["serve", str(base_index), "--allow-host", bad]) == 1
    err = capsys.readouterr().err
    assert "--allow-host" in err and err.count("\n") == 1


def test_the_cli_still_prints_absolute_paths(base_index: Path, photos_dir: Path, capsys):
    import json

    from cbir.cli import main

    assert main(["search", str(base_index), str(photo(photos_dir, "horse")), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    hits = out["results"] if isinstance(out, dict) else out
    assert hits and all(Path(h["path"]).is_absolute() for h in hits)

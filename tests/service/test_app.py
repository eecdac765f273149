"""The HTTP API on a real index of 13 photos: every endpoint, and every refusal."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cbir.index.store import IndexStore
from cbir.service.app import create_app
from tests.service.conftest import KEY, TEST_HOSTS, flipped, noise_png, photo, png_bomb

AUTH = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def ro(base_index: Path):
    """A client on the shared index, with no API key (writes disabled)."""
    app = create_app(base_index, allowed_hosts=TEST_HOSTS)
    with TestClient(app) as c:
        yield c


@pytest.fixture
def rw(index_copy: Path):
    """A client on a private copy of the index, with the API key set."""
    app = create_app(index_copy, api_key=KEY, max_upload_bytes=200_000, allowed_hosts=TEST_HOSTS)
    with TestClient(app) as c:
        yield c


def ids_by_name(client: TestClient) -> dict[str, int]:
    r = client.get("/search", params={"id": 1, "k": 100})
    return {Path(h["path"]).stem: h["id"] for h in r.json()["results"]}


def upload(path_or_bytes: Path | bytes, name: str = "q.jpg", ctype: str = "image/jpeg") -> dict:
    data = path_or_bytes.read_bytes() if isinstance(path_or_bytes, Path) else path_or_bytes
    return {"file": (name, data, ctype)}


def assert_error(r, status: int, reason: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["status"] == status and body["error"] and "Traceback" not in body["error"]
    if reason:
        assert body["reason"] == reason, body
    return body


# ------------------------------------------------------------------- reading
def test_health_reports_the_index(ro):
    h = ro.get("/health").json()
    assert h["status"] == "ok" and h["images"] == 13 and h["kind"] == "float"
    assert h["index_type"] == "Flat" and h["threshold"] is None and h["writes"] is False


def test_page_and_static_files_are_served(ro):
    r = ro.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'src="/static/app.js"' in r.text and 'id="file"' in r.text
    assert "default-src 'self'" in r.headers["content-security-policy"]
    js = ro.get("/static/app.js")
    assert js.status_code == 200 and "/feedback" in js.text and "innerHTML" not in js.text
    assert ro.get("/static/style.css").status_code == 200
    assert_error(ro.get("/static/../app.py"), 404)


def test_openapi_documents_every_endpoint(ro):
    paths = ro.get("/openapi.json").json()["paths"]
    assert set(paths) >= {
        "/search",
        "/images",
        "/images/{id}",
        "/thumbs/{id}",
        "/feedback",
        "/health",
        "/metrics",
    }
    assert set(paths["/search"]) == {"get", "post"} and set(paths["/images/{id}"]) == {
        "get",
        "delete",
    }


def test_search_by_upload_finds_the_photo_first(ro, photos_dir):
    r = ro.post("/search", files=upload(photo(photos_dir, "horse")), data={"k": "5"})
    body = r.json()
    assert r.status_code == 200 and body["query"].startswith("sha256:") and body["k"] == 5
    hits = body["results"]
    assert len(hits) == 5 and [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert Path(hits[0]["path"]).stem == "horse" and hits[0]["score"] > 0.999
    assert all(a["score"] >= b["score"] for a, b in zip(hits, hits[1:], strict=False))
    assert (
        hits[0]["thumb"] == f"/thumbs/{hits[0]['id']}"
        and hits[0]["image"] == f"/images/{hits[0]['id']}"
    )
    assert body["no_match"] is False and body["threshold"] is None


def test_search_by_upload_of_a_variant_and_the_type_comes_from_the_bytes(ro, photos_dir):
    # a PNG sent as "photo.jpg" with a JPEG content type: the bytes decide
    r = ro.post(
        "/search", files=upload(flipped(photo(photos_dir, "chelsea")), "photo.jpg"), data={"k": "3"}
    )
    assert r.status_code == 200 and Path(r.json()["results"][0]["path"]).stem == "chelsea"


def test_search_by_id_puts_the_image_first(ro):
    names = ids_by_name(ro)
    assert len(names) == 13
    r = ro.get("/search", params={"id": names["coffee"], "k": 3}).json()
    assert r["query"] == f"id:{names['coffee']}" and len(r["results"]) == 3
    assert r["results"][0]["id"] == names["coffee"] and r["results"][0]["score"] > 0.999
    assert len(ro.get("/search", params={"id": names["coffee"], "k": 100}).json()["results"]) == 13


@pytest.mark.parametrize(
    ("params", "status", "reason"),
    [
        ({"id": 999}, 404, "unknown-id"),
        ({"id": "abc"}, 422, "invalid"),
        ({"id": -1}, 422, "invalid"),
        ({}, 422, "invalid"),
        ({"id": 2**64}, 422, "invalid"),
        ({"id": 1, "k": 0}, 422, "bad-k"),
        ({"id": 1, "k": 101}, 422, "bad-k"),
        ({"id": 1, "tag": "x" * 65}, 422, "invalid"),
    ],
)
def test_search_by_id_refusals(ro, params, status, reason):
    body = assert_error(ro.get("/search", params=params), status, reason)
    if reason == "invalid":
        assert body["error"].startswith("invalid request:")


def test_images_and_thumbs_are_served_by_id(ro, photos_dir):
    names = ids_by_name(ro)
    for name in ("astronaut", "camera"):  # one PNG, one JPEG in the fixture
        src = photo(photos_dir, name)
        r = ro.get(f"/images/{names[name]}")
        assert r.status_code == 200 and r.content == src.read_bytes()
        assert r.headers["content-type"] == ("image/png" if src.suffix == ".png" else "image/jpeg")
        t = ro.get(f"/thumbs/{names[name]}")
        assert t.status_code == 200 and t.headers["content-type"] == "image/jpeg"
        with Image.open(io.BytesIO(t.content)) as im:
            assert im.format == "JPEG" and max(im.size) == 192
        assert (
            ro.get(
                f"/thumbs/{names[name]}", headers={"If-None-Match": t.headers["etag"]}
            ).status_code
            == 304
        )


@pytest.mark.parametrize(
    "url",
    [
        "/images/999",
        "/thumbs/999",
        "/images/abc",
        "/images/..%2Fmeta.sqlite",
        "/images/1/../../meta.sqlite",
        "/nowhere",
        "/images/99999999999999999999999",
        "/thumbs/-1",
    ],
)
def test_image_refusals_never_serve_a_path(ro, url):
    r = ro.get(url)
    assert r.status_code in (404, 422)
    assert_error(r, r.status_code)
    assert b"SQLite" not in r.content


def test_an_image_whose_file_went_away_is_a_404(rw, index_copy, photos_copy):
    from cbir.pipeline import index_folder

    index_folder(photos_copy, index_copy, progress=False)  # rows for a private copy
    store = IndexStore.open(index_copy)
    row = store.row_by_path(str(photo(photos_copy, "moon")))
    store.close()
    photo(photos_copy, "moon").unlink()
    assert_error(rw.get(f"/images/{row['id']}"), 404, "file-unreadable")
    assert_error(rw.get(f"/thumbs/{row['id']}"), 404, "file-unreadable")


# ------------------------------------------------------------- tags, threshold
def test_tag_filter_keeps_only_tagged_images_in_rank_order(rw, index_copy):
    names = ids_by_name(rw)
    store = IndexStore.open(index_copy)
    for n in ("chelsea", "horse", "coffee"):
        store.set_tags(names[n], "animal,photo" if n != "coffee" else "drink")
    store.close()
    r = rw.get("/search", params={"id": names["astronaut"], "k": 5, "tag": "Animal"}).json()
    assert r["tag"] == "animal"
    assert {h["id"] for h in r["results"]} == {names["chelsea"], names["horse"]}
    assert [h["rank"] for h in r["results"]] == [1, 2] and all(
        "animal" in h["tags"] for h in r["results"]
    )
    full = rw.get("/search", params={"id": names["astronaut"], "k": 13}).json()["results"]
    order = [h["id"] for h in full if h["id"] in (names["chelsea"], names["horse"])]
    assert [h["id"] for h in r["results"]] == order
    one = rw.get("/search", params={"id": names["astronaut"], "k": 1, "tag": "animal"}).json()[
        "results"
    ]
    assert [h["id"] for h in one] == order[:1]
    assert rw.get("/search", params={"id": 1, "tag": "nothing-has-this"}).json()["results"] == []
    form = rw.post("/search", files=upload(noise_png(64)), data={"k": "10", "tag": "drink"}).json()
    assert [h["id"] for h in form["results"]] == [names["coffee"]]


def test_no_match_only_when_a_threshold_is_set_and_the_best_score_is_below_it(rw, index_copy):
    noise = upload(noise_png(96, seed=3), "noise.png", "image/png")
    before = rw.post("/search", files=noise).json()
    assert before["threshold"] is None and before["no_match"] is False  # never without a threshold
    best = before["results"][0]["score"]
    store = IndexStore.open(index_copy)
    store.set_meta("threshold", {"score": round(best + 0.05, 4), "precision": 0.9})
    store.close()
    after = rw.post("/search", files=noise).json()
    assert after["threshold"] == round(best + 0.05, 4) and after["no_match"] is True
    assert after["results"]  # the results are still shown
    same = rw.get("/search", params={"id": 1}).json()
    assert same["results"][0]["score"] > 0.999 and same["no_match"] is False
    assert rw.get("/health").json()["threshold"] == round(best + 0.05, 4)


# ------------------------------------------------------------ upload refusals
@pytest.mark.parametrize(
    ("data", "status", "reason"),
    [
        (b"", 400, "empty"),
        (b"GIF89a but not really an image at all", 400, None),
        (b"%PDF-1.4 this is a document", 415, "not-an-image"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", 415, "not-an-image"),
        (png_bomb(), 413, "bomb"),
    ],
    ids=["empty", "fake-gif", "pdf", "svg", "bomb"],
)
@pytest.mark.parametrize("endpoint", ["/search", "/images"])
def test_bad_uploads_are_refused_with_json(rw, data, status, reason, endpoint):
    r = rw.post(endpoint, files=upload(data), headers=AUTH)
    assert_error(r, status, reason)


MAGIC = [
    b"",
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n",
    b"GIF89a",
    b"RIFF\x00\x00\x00\x00WEBP",
    b"BM",
    b"II*\x00",
]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(magic=st.sampled_from(MAGIC), tail=st.binary(max_size=2048))
def test_hostile_uploads_get_a_json_refusal_never_a_crash(ro, magic, tail):
    r = ro.post("/search", files=upload(magic + tail))
    assert r.status_code in (400, 413, 415) or (r.status_code == 200 and r.json()["results"])
    if r.status_code != 200:
        assert_error(r, r.status_code)


def test_truncated_upload_is_refused(rw, photos_dir):
    data = photo(photos_dir, "camera").read_bytes()
    assert_error(rw.post("/search", files=upload(data[: len(data) // 2])), 400)


def test_upload_size_limit(rw):
    small, big = noise_png(240), noise_png(400)  # ~170 KB and ~480 KB; the limit is 200 KB
    assert 150_000 < len(small) < 200_000 < 240_000 < len(big)
    assert rw.post("/search", files=upload(small)).status_code == 200
    over = noise_png(260)  # over the upload limit, within the body allowance
    assert 200_000 < len(over) < 200_000 + 64 * 1024
    assert (
        "upload larger than"
        in assert_error(rw.post("/search", files=upload(over)), 413, "too-large")["error"]
    )
    body = assert_error(rw.post("/search", files=upload(big)), 413, "too-large")
    assert "request body of" in body["error"]  # refused on its Content-Length, before reading
    assert_error(rw.post("/images", files=upload(big), headers=AUTH), 413, "too-large")

    def chunks():  # no Content-Length: counted while it arrives
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'
        yield big
        yield b"\r\n--b--\r\n"

    r = rw.post(
        "/search", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert "request body larger than" in assert_error(r, 413, "too-large")["error"]


def test_malformed_requests_get_json_errors(rw):
    assert_error(rw.post("/search"), 422, "invalid")  # no file
    assert_error(rw.post("/search", data={"k": "3"}), 422, "invalid")
    assert_error(
        rw.post("/search", files=upload(noise_png(32)), data={"k": "many"}), 422, "invalid"
    )
    r = rw.post(
        "/search",
        content=b"--x\r\ngarbage",
        headers={"Content-Type": "multipart/form-data; boundary=x"},
    )
    assert r.status_code in (400, 422) and assert_error(r, r.status_code)
    assert_error(rw.put("/search"), 405, "method-not-allowed")
    r = rw.post("/search", headers={"Content-Length": "12x"}, content=b"abc")
    assert assert_error(r, 400)["error"] == "invalid Content-Length header"


# -------------------------------------------------------------------- writes
def test_writes_are_refused_without_a_configured_key(ro, photos_dir):
    for r in (
        ro.post("/images", files=upload(photo(photos_dir, "horse")), headers=AUTH),
        ro.delete("/images/1", headers=AUTH),
    ):
        assert_error(r, 403, "writes-disabled")
    assert ro.get("/health").json()["images"] == 13


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "no-key"),
        ({"X-API-Key": ""}, "no-key"),
        ({"X-API-Key": KEY[:-1]}, "bad-key"),
        ({"X-API-Key": KEY + "x"}, "bad-key"),
        ({"X-API-Key": KEY.upper()}, "bad-key"),
        ({"Authorization": f"Bearer {KEY}"}, "no-key"),
    ],
)
def test_writes_are_refused_without_the_right_key(rw, photos_dir, headers, reason):
    r = rw.post("/images", files=upload(flipped(photo(photos_dir, "horse"))), headers=headers)
    assert_error(r, 401, reason)
    assert r.headers["www-authenticate"] == "ApiKey"
    assert_error(rw.delete("/images/1", headers=headers), 401, reason)
    assert rw.get("/health").json()["images"] == 13
    assert rw.get("/search", params={"id": 1}).status_code == 200


def test_add_search_and_delete_an_uploaded_image(rw, index_copy, photos_dir):
    data = flipped(photo(photos_dir, "rocket"), "JPEG")
    r = rw.post(
        "/images", files=upload(data, "my rocket.png"), data={"tags": "Space, rocket"}, headers=AUTH
    )
    assert r.status_code == 201, r.text
    added = r.json()
    assert added["created"] is True and added["path"] == f"uploads/{added['sha256']}.jpg"
    assert (index_copy / added["path"]).read_bytes() == data
    assert rw.get("/health").json()["images"] == 14
    # the same bytes again: same id, tags replaced
    again = rw.post("/images", files=upload(data), data={"tags": "space"}, headers=AUTH)
    assert (
        again.status_code == 200
        and again.json()["id"] == added["id"]
        and again.json()["created"] is False
    )
    hits = rw.post("/search", files=upload(data), data={"k": "2"}).json()["results"]
    assert (
        hits[0]["id"] == added["id"] and hits[0]["score"] > 0.999 and hits[0]["tags"] == ["space"]
    )
    assert Path(hits[1]["path"]).stem == "rocket"  # the original photo is its nearest neighbour
    assert rw.get(added["image"]).content == data and rw.get(added["thumb"]).status_code == 200

    d = rw.delete(f"/images/{added['id']}", headers=AUTH)
    assert d.status_code == 200 and d.json() == {"deleted": [added["id"]]}
    assert not (index_copy / added["path"]).exists()  # the upload's file went with it
    assert_error(rw.delete(f"/images/{added['id']}", headers=AUTH), 404, "unknown-id")
    assert_error(rw.get(f"/search?id={added['id']}"), 404, "unknown-id")
    ids = {
        h["id"] for h in rw.post("/search", files=upload(data), data={"k": "100"}).json()["results"]
    }
    assert added["id"] not in ids and len(ids) == 13
    assert_error(rw.delete("/images/abc", headers=AUTH), 422)
    assert_error(rw.delete(f"/images/{2**64}", headers=AUTH), 422)


def test_delete_an_indexed_photo_keeps_its_file(rw, photos_dir):
    names = ids_by_name(rw)
    assert rw.delete(f"/images/{names['moon']}", headers=AUTH).json() == {
        "deleted": [names["moon"]]
    }
    assert photo(photos_dir, "moon").exists()
    assert names["moon"] not in ids_by_name(rw).values()


def test_bad_tags_are_refused(rw, photos_dir):
    data = flipped(photo(photos_dir, "coins"))
    assert_error(rw.post("/images", files=upload(data), data={"tags": "a" * 70}, headers=AUTH), 400)
    assert_error(
        rw.post("/images", files=upload(data), data={"tags": "ok,bad\x01tag"}, headers=AUTH), 400
    )
    assert rw.get("/health").json()["images"] == 13


# ------------------------------------------------------------------ feedback
def test_feedback_is_stored_in_the_index(rw, index_copy, photos_dir):
    names = ids_by_name(rw)
    r = rw.post(
        "/feedback",
        json={"query": f"id:{names['horse']}", "result_id": names["chelsea"], "relevant": False},
        headers=AUTH,
    )
    assert r.status_code == 201 and r.json()["query_saved"] is False
    res = rw.post(
        "/search",
        files=upload(flipped(photo(photos_dir, "coffee"), "JPEG"), "c.png"),
        data={"k": "2"},
    ).json()
    q, top = res["query"], res["results"][0]["id"]
    r2 = rw.post("/feedback", json={"query": q, "result_id": top, "relevant": True}, headers=AUTH)
    assert r2.status_code == 201 and r2.json()["query_saved"] is True
    assert r2.json()["id"] == r.json()["id"] + 1
    saved = index_copy / "queries" / f"{q[7:]}.jpg"
    assert saved.read_bytes() == flipped(photo(photos_dir, "coffee"), "JPEG")
    store = IndexStore.open(index_copy)
    rows = [(f["query"], f["result_id"], f["relevant"]) for f in store.feedback()]
    store.close()
    assert rows == [(f"id:{names['horse']}", names["chelsea"], 0), (q, top, 1)]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"query": "id:1", "result_id": 999, "relevant": True}, 404),
        ({"query": "id:999", "result_id": 1, "relevant": True}, 404),
        ({"query": "id:1", "result_id": 2}, 422),
        ({"query": "/etc/passwd", "result_id": 2, "relevant": True}, 422),
        ({"query": "sha256:xyz", "result_id": 2, "relevant": True}, 422),
        ({"query": "id:1", "result_id": "two", "relevant": True}, 422),
        ({"query": "id:1", "result_id": 2**64, "relevant": True}, 422),
        ({"query": "id:1", "result_id": 2, "relevant": "maybe"}, 422),
    ],
)
def test_feedback_refusals(rw, index_copy, body, status):
    assert_error(rw.post("/feedback", json=body, headers=AUTH), status)
    store = IndexStore.open(index_copy)
    assert store.feedback() == []
    store.close()


def test_feedback_not_json_is_refused(rw):
    assert_error(
        rw.post(
            "/feedback",
            content=b"{not json",
            headers={"Content-Type": "application/json", **AUTH},
        ),
        422,
    )


def test_feedback_needs_the_key(index_copy):
    with TestClient(create_app(index_copy, api_key=KEY, allowed_hosts=TEST_HOSTS)) as c:
        body = {"query": "id:1", "result_id": 2, "relevant": True}
        assert_error(c.post("/feedback", json=body), 401, "no-key")
        assert c.post("/feedback", json=body, headers=AUTH).status_code == 201


# ------------------------------------------------------------------- metrics
def test_metrics_in_prometheus_text_format(rw):
    rw.get("/search", params={"id": 1, "k": 3})
    rw.get("/search", params={"id": 1, "k": 3})
    rw.get("/search", params={"id": 999})
    rw.post("/images", files=upload(b"x"))
    rw.get("/no/such/page")
    r = rw.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith(
        "text/plain; version=0.0.4"
    )
    text = r.text
    sample = re.compile(r'^[a-z_]+(\{[a-z_]+="[^"\n]*"(,[a-z_]+="[^"\n]*")*\})? [0-9.e+-]+$')
    for line in text.splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or sample.match(line), line
    assert 'cbir_requests_total{method="GET",route="/search",status="200"} 2' in text
    assert 'cbir_requests_total{method="GET",route="/search",status="404"} 1' in text
    assert 'cbir_requests_total{method="POST",route="/images",status="401"} 1' in text
    assert 'cbir_requests_total{method="GET",route="<unmatched>",status="404"} 1' in text
    buckets = [
        int(v)
        for v in re.findall(
            r'duration_seconds_bucket\{method="GET",route="/search",le="[^"]+"\} (\d+)', text
        )
    ]
    assert buckets == sorted(buckets) and buckets[-1] == 3
    assert 'cbir_request_duration_seconds_count{method="GET",route="/search"} 3' in text
    assert "cbir_index_images 13\n" in text and "# TYPE cbir_index_images gauge" in text
    size = float(re.search(r"^cbir_index_bytes (\S+)$", text, re.M).group(1))
    assert size > 13 * 1280 * 4


def test_security_headers_on_every_response(ro):
    for r in (ro.get("/health"), ro.get("/search", params={"id": 999}), ro.get("/")):
        assert (
            r.headers["x-content-type-options"] == "nosniff"
            and r.headers["x-frame-options"] == "DENY"
        )

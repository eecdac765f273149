"""``GET /search/text``: the web page's text box (issue 18): class keywords on the shipped
backbone, the where and tag filters, and the hint when nothing is found."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cbir.backbones.minilm import available
from cbir.index.store import IndexStore
from cbir.service.app import create_app
from tests.service.conftest import TEST_HOSTS

pytestmark = pytest.mark.skipif(not available(), reason="class keywords need cbir[text]")


@pytest.fixture(scope="module")
def client(base_index: Path):
    with TestClient(create_app(base_index, allowed_hosts=TEST_HOSTS)) as c:
        yield c


def test_words_find_the_photo(client) -> None:
    r = client.get("/search/text", params={"q": "cat", "k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query"] == "text:cat" and body["hint"] is None
    assert Path(body["results"][0]["path"]).stem == "chelsea"
    assert body["results"][0]["thumb"] == f"/thumbs/{body['results'][0]['id']}"


def test_where_and_tag_filter_text_results(client, index_copy) -> None:
    r = client.get("/search/text", params={"q": "cat", "where": "not name contains 'chelsea'"})
    got = [Path(h["path"]).stem for h in r.json()["results"]]
    assert r.status_code == 200 and "chelsea" not in got
    store = IndexStore.open(index_copy)
    cat = next(r["id"] for r in store.rows() if Path(r["path"]).stem == "chelsea")
    store.set_tags(cat, "pet")
    store.close()
    with TestClient(create_app(index_copy, allowed_hosts=TEST_HOSTS)) as c:
        body = c.get("/search/text", params={"q": "cat", "tag": "pet"}).json()
        assert [h["id"] for h in body["results"]] == [cat] and body["tag"] == "pet"
        body = c.get("/search/text", params={"q": "cat", "tag": "dog"}).json()
        assert body["results"] == [] and "closest to 'cat'" in body["hint"]


def test_nothing_found_says_why(client) -> None:
    body = client.get("/search/text", params={"q": "house"}).json()
    assert body["results"] == []
    assert "ImageNet classes closest to 'house'" in body["hint"]
    assert "onnx-clip:DIR" in body["hint"]


def test_bad_requests(client) -> None:
    assert client.get("/search/text", params={"q": "cat", "mode": "nope"}).status_code == 422
    assert client.get("/search/text", params={"q": "cat", "k": 0}).status_code == 422
    assert client.get("/search/text", params={"q": ""}).status_code == 422
    r = client.get("/search/text", params={"q": "cat", "mode": "backbone"})
    assert r.status_code == 400 and "embeds images only" in r.json()["error"]
    r = client.get("/search/text", params={"q": "cat", "where": "year <"})
    assert r.status_code == 400

"""The Guard is the one place the API key is checked: its rule covers every route that
documents the key, and nothing else; a write under a root path is refused too."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from cbir.service.app import create_app
from cbir.service.guard import ApiKey, Guard
from cbir.service.schemas import ApiError
from tests.service.conftest import TEST_HOSTS

KEY = "guard-test-key-0123456789"


def _guard_key(app) -> ApiKey:
    (mw,) = [m for m in app.user_middleware if m.cls is Guard]
    return mw.kwargs["key"]


def test_the_key_rule_covers_exactly_the_routes_that_document_the_key(base_index: Path):
    app = create_app(base_index, api_key=KEY, allowed_hosts=TEST_HOSTS)
    key = _guard_key(app)
    with TestClient(app) as c:
        paths = c.get("/openapi.json").json()["paths"]
    documented = {
        (method.upper(), path)
        for path, ops in paths.items()
        for method, op in ops.items()
        if op.get("security")
    }
    assert documented == {("POST", "/images"), ("DELETE", "/images/{id}"), ("POST", "/feedback")}
    routes = [(m, r.path) for r in app.routes if isinstance(r, APIRoute) for m in r.methods]
    assert len(routes) >= 10
    for method, path in routes:
        assert key.needed(method, path) == ((method, path) in documented), (method, path)


def test_the_key_check_itself():
    key = ApiKey(KEY)
    key.check(KEY)
    for given, status, reason in (
        (None, 401, "no-key"),
        ("", 401, "no-key"),
        (KEY + "x", 401, "bad-key"),
    ):
        with pytest.raises(ApiError) as e:
            key.check(given)
        assert (e.value.status, e.value.reason) == (status, reason)
    with pytest.raises(ApiError) as e:
        ApiKey(None).check(KEY)
    assert (e.value.status, e.value.reason) == (403, "writes-disabled")
    assert ApiKey(KEY).enabled and not ApiKey(None).enabled


def test_writes_under_a_root_path_need_the_key(index_copy: Path):
    with TestClient(
        create_app(index_copy, api_key=KEY, allowed_hosts=TEST_HOSTS), root_path="/api"
    ) as c:
        r = c.delete("/api/images/1")
        assert r.status_code == 401 and r.json()["reason"] == "no-key"
        assert c.get("/api/health").json()["images"] == 13
        r = c.delete("/api/images/1", headers={"X-API-Key": KEY})
        assert r.status_code == 200 and r.json()["deleted"] == [1]

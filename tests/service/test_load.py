"""The search-by-id fast path, `cbir serve --workers`, the loopback load generator and a short
soak (the 10-minute one is `python -m cbir_testing.reliability`, and marked slow here)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cbir.service.app import create_app
from cbir.service.guard import fast_search_query
from cbir_testing.loadgen import (
    ServerProcess,
    id_request,
    run_load,
    run_wrk,
    upload_request,
    wrk_available,
)
from tests.service.conftest import TEST_HOSTS, flipped, photo


@pytest.mark.parametrize(
    "qs, want",
    [
        (b"id=3", (3, 10)),
        (b"id=3&k=5", (3, 5)),
        (b"k=100&id=0", (0, 100)),
        (b"id=3&k=0", None),  # out of range: the route answers 422
        (b"id=3&k=101", None),
        (b"id=-3", None),
        (b"id=3&tag=cat", None),
        (b"id=3&id=4", None),
        (b"id=3&k=", None),
        (b"k=5", None),
        (b"", None),
        (b"id=" + b"9" * 19, None),
    ],
)
def test_fast_path_takes_only_plain_queries(qs, want):
    assert fast_search_query(qs, 100) == want


def test_fast_path_answers_what_the_route_answers(base_index: Path):
    with TestClient(create_app(base_index, allowed_hosts=TEST_HOSTS)) as c:
        for id_ in (1, 5, 13):
            fast = c.get(f"/search?id={id_}&k=5")
            full = c.get(f"/search?id={id_}&k=5&tag=")  # a tag: through FastAPI
            assert fast.status_code == full.status_code == 200
            assert fast.json() == full.json() and fast.json()["results"][0]["id"] == id_
            assert fast.headers["content-type"] == "application/json"
            assert fast.headers["x-content-type-options"] == "nosniff"
        r = c.get("/search?id=999999&k=5")  # unknown: the route's 404
        assert r.status_code == 404 and r.json()["reason"] == "unknown-id"
        assert c.get("/search?id=1&k=0").json()["reason"] == "bad-k"
        metrics = c.get("/metrics").text
        assert 'cbir_requests_total{method="GET",route="/search",status="200"} 6' in metrics
        assert 'route="/search",status="404"} 1' in metrics


def _uploads(photos_dir: Path) -> list:
    return [upload_request(flipped(photo(photos_dir, n)), "q.png") for n in ("astronaut", "coffee")]


def test_load_on_cbir_serve_with_two_workers(base_index: Path, photos_dir: Path):
    """Both generators against `cbir serve --workers 2 --embed-threads 1`: 0 errors, right answers."""
    ids = [id_request(i, k=5) for i in range(1, 14)]
    with ServerProcess(base_index, "--embed-threads", "1", workers=2) as srv:
        assert srv.rss() > 50 * 2**20  # the parent and both workers are counted
        r = run_load(
            srv.url,
            ids,
            200,
            8,
            server_pid=srv.pid,
            check=lambda q, j: j["results"][0]["id"] == q.expect,
        )
        assert (r.requests, r.errors, r.checked_ok) == (200, 0, 200), r.error_samples
        assert r.p50_ms > 0 and r.p99_ms >= r.p50_ms and r.server_cpu_s > 0
        up = run_load(srv.url, _uploads(photos_dir), 16, 4, check=lambda q, j: bool(j["results"]))
        assert (up.errors, up.checked_ok) == (0, 16), up.error_samples
        if wrk_available():
            w = run_wrk(srv.url, ids, 400, 8, server_pid=srv.pid)
            assert w.requests >= 400 and w.errors == 0, w.error_samples
            bad = run_wrk(srv.url, [id_request(10**6)], 20, 2)  # a 404 is an error
            assert bad.errors == bad.requests >= 20 and "404" in bad.error_samples[0]


def test_load_generator_refuses_other_hosts():
    from cbir.errors import CbirError

    with pytest.raises(CbirError, match="loopback"):
        run_load("http://192.0.2.1:8000", [id_request(1)], 1, 1)


def test_short_soak_memory_flat_no_errors(base_index: Path):
    from cbir_testing.reliability.soak import MAX_GROWTH_BYTES, run_soak

    r = run_soak(base_index, seconds=8, warmup_s=3)
    assert r.errors == 0 and r.requests > 50, r.error_samples
    assert len(r.rss) >= 6 and r.growth_bytes <= MAX_GROWTH_BYTES and r.ok


@pytest.mark.slow
def test_soak_ten_minutes_on_the_load_index():
    from cbir_testing.collection import load_index
    from cbir_testing.reliability.soak import run_soak

    index_dir, _ = load_index()
    r = run_soak(index_dir, seconds=600)
    assert r.ok, (r.errors, r.growth_bytes, r.error_samples)

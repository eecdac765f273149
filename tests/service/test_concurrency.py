"""Searches keep being served while images are added and deleted: each answer is the index
before a commit or after it, never half of one (a live uvicorn server, several threads)."""

from __future__ import annotations

import threading

import httpx

from cbir.service.app import create_app
from tests.service.conftest import KEY, flipped, live_server, photo

AUTH = {"X-API-Key": KEY}


def test_readers_see_the_old_or_the_new_index_during_adds_and_deletes(index_copy, photos_dir):
    app = create_app(index_copy, api_key=KEY)
    uploads = {n: flipped(photo(photos_dir, n), "JPEG") for n in ("horse", "coffee", "rocket")}
    query = photo(photos_dir, "camera").read_bytes()
    with live_server(app) as url:
        with httpx.Client(base_url=url, timeout=60) as c:
            base = {h["id"] for h in c.get("/search", params={"id": 1, "k": 100}).json()["results"]}
        assert len(base) == 13
        states = [frozenset(base)]  # every state the index has been in, in order
        stop = threading.Event()
        seen: list[frozenset[int]] = []
        problems: list[str] = []

        def check(r: httpx.Response) -> None:
            if r.status_code != 200:
                problems.append(f"{r.status_code} {r.text[:200]}")
                return
            hits = r.json()["results"]
            if [h["rank"] for h in hits] != list(range(1, len(hits) + 1)):
                problems.append(f"ranks {[h['rank'] for h in hits]}")
            if any(a["score"] < b["score"] for a, b in zip(hits, hits[1:], strict=False)):
                problems.append("scores not sorted")
            seen.append(frozenset(h["id"] for h in hits))

        def read_by_id() -> None:
            with httpx.Client(base_url=url, timeout=60) as c:
                while not stop.is_set():
                    check(c.get("/search", params={"id": 1, "k": 100}))

        def read_by_upload() -> None:
            with httpx.Client(base_url=url, timeout=60) as c:
                while not stop.is_set():
                    check(c.post("/search", files={"file": ("q.jpg", query)}, data={"k": "100"}))

        readers = [threading.Thread(target=read_by_id) for _ in range(3)]
        readers.append(threading.Thread(target=read_by_upload))
        for t in readers:
            t.start()
        try:
            with httpx.Client(base_url=url, timeout=60, headers=AUTH) as w:
                current = set(base)
                for i, (name, data) in enumerate(uploads.items()):
                    r = w.post("/images", files={"file": (f"{name}.jpg", data)})
                    assert r.status_code == 201, r.text
                    current.add(r.json()["id"])
                    states.append(frozenset(current))
                    victim = sorted(base)[-1 - i]  # also delete an original photo (never id 1)
                    assert w.delete(f"/images/{victim}").status_code == 200
                    current.discard(victim)
                    states.append(frozenset(current))
                n_reads_during_writes = len(seen)
        finally:
            stop.set()
            for t in readers:
                t.join(60)
    assert not problems, problems[:5]
    assert n_reads_during_writes > 10
    allowed = set(states)
    half = [sorted(s) for s in seen if s not in allowed]
    assert not half, half[:3]
    assert seen[-1] == states[-1]  # the last reads saw the final index


def test_a_read_that_a_commit_overtook_is_read_again(index_copy):
    """Deterministic: a delete commits in the middle of a read; the answer is the new index."""
    from cbir import ops

    svc = create_app(index_copy).state.service
    feats = svc.store.features([1])
    victim = max(h.id for h in svc.searcher.search_features(feats, 100)[0])
    calls: list[int] = []

    def read() -> set[int]:
        hits = svc.searcher.search_features(feats, 100)[0]
        calls.append(len(hits))
        if len(calls) == 1:
            ops.delete_ids(index_copy, [victim])  # lands after the index was read
        return {h.id for h in hits}

    ids, gen = svc.consistent_read(read)
    assert calls == [13, 12] and victim not in ids and len(ids) == 12
    assert gen == svc.store.generation
    svc.close()

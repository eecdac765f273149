"""Write faults: a failed write is one clear error and leaves the old index whole."""

from __future__ import annotations

import os

import pytest

from cbir.errors import IndexWriteError
from cbir.index.store import IndexStore
from cbir_testing.reliability.faults import (
    clear_cli_error,
    drop_dac,
    mount_problem,
    read_only_view,
    run_cli,
)
from cbir_testing.reliability.suite import Counts, fault_tallies


def _check(tallies, counts):
    for t in tallies:
        if t.skipped:
            assert t.fault.startswith(("read-only", "full disk")) and mount_problem() is not None
            continue
        assert t.trials == counts.faults
        assert t.failures == 0 and t.lost == 0, (t.fault, t.details)


def test_write_faults_fast(lab, tmp_path):
    counts = Counts.quick()
    tallies = fault_tallies(lab, tmp_path, counts, seed=1, log=lambda _: None)
    _check(tallies, counts)
    if mount_problem():
        pytest.skip(f"read-only mount and tmpfs trials not run: {mount_problem()}")


def test_an_unwritable_index_is_read_but_not_written(small_index):
    """Regression: an index in a folder this process cannot write was 'not a readable cbir
    index' for search too; writes now fail at once with one line naming the cause."""
    photos, idx = small_index
    mode = idx.stat().st_mode
    idx.chmod(0o555)
    try:
        r = run_cli(["search", str(idx), str(sorted(photos.glob("*.jpg"))[0]), "-k", "1"], drop_dac)
        assert r.returncode == 0 and "1.0000" in r.stdout, r.stderr
        r = run_cli(["index", str(photos), "--index", str(idx), "--size", "64"], drop_dac)
        assert clear_cli_error(r) is None, r.stderr
        assert "not writable" in r.stderr
    finally:
        idx.chmod(mode)


@pytest.mark.skipif(mount_problem() is not None, reason=f"needs mount rights: {mount_problem()}")
def test_uploads_to_a_read_only_index_get_507_without_waiting_for_the_lock(small_index, tmp_path):
    """Regression: the writer-lock wait retried any CbirError for 30 s; an unwritable index
    is no busy one. The service answers 507 with the cause."""
    from fastapi.testclient import TestClient

    from cbir import ops
    from cbir.service.app import create_app

    photos, idx = small_index
    data = sorted(photos.glob("*.jpg"))[0].read_bytes()
    with read_only_view(idx, tmp_path / "ro") as ro:
        store = IndexStore.open(ro)
        try:
            assert store.read_only
            with pytest.raises(IndexWriteError, match="not writable"):
                store.lock()
        finally:
            store.close()
        with pytest.raises(IndexWriteError):
            ops.add_image_bytes(ro, data, "x.jpg", wait_s=60)  # raised at once, not after 60 s
        with TestClient(create_app(ro, api_key="k" * 20, allowed_hosts=["testserver"])) as c:
            r = c.post(
                "/images", files={"file": ("x.jpg", data + b"\0")}, headers={"X-API-Key": "k" * 20}
            )
            assert r.status_code == 507 and r.json()["reason"] == "index-not-writable", r.text
            assert c.get("/search", params={"id": 1, "k": 3}).status_code == 200


@pytest.mark.slow
def test_write_faults_release(lab, tmp_path):
    counts = Counts()
    tallies = fault_tallies(lab, tmp_path, counts, seed=2, log=lambda _: None)
    _check(tallies, counts)


def test_drop_dac_really_drops_root_overrides(tmp_path):
    """The permission trials are honest as root: the subprocess cannot read a 000 file."""
    import subprocess

    f = tmp_path / "secret"
    f.write_text("x")
    os.chmod(f, 0)
    r = subprocess.run(["cat", str(f)], preexec_fn=drop_dac, capture_output=True, text=True)
    assert r.returncode != 0 and "Permission denied" in r.stderr

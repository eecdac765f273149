"""kill -9 during index, delete and compaction: the index stays whole, nothing committed is
lost, a re-run completes (the fast part; the release run is marked slow)."""

from __future__ import annotations

import pytest

from cbir.index.check import check_index
from cbir.index.store import IndexStore
from cbir_testing.reliability.crash import run_driver
from cbir_testing.reliability.suite import Counts, crash_tallies


def _assert_clean(tallies):
    for t in tallies:
        assert t.trials > 0
        assert t.failures == 0 and t.lost == 0, (t.fault, t.details)


def test_kills_lose_nothing_fast(lab):
    tallies = crash_tallies(lab, Counts.quick(), seed=1, log=lambda _: None)
    assert sum(t.trials for t in tallies) == 10
    _assert_clean(tallies)


@pytest.mark.parametrize("step", range(1, 9))
def test_a_kill_while_the_index_is_created_leaves_no_half_made_index(lab, tmp_path, step):
    """Regression: creation wrote the schema and meta rows in separate transactions; a kill
    between them left an index without its config that every later run crashed on."""
    idx = tmp_path / "index"
    run = run_driver(["--die-at", str(step), *lab._index_args(idx)])
    assert run.killed
    if IndexStore.exists(idx):
        rep = check_index(idx)
        assert rep.ok, rep.errors
    lab._index(idx)  # the re-run completes
    rep = check_index(idx)
    assert rep.ok and rep.images == lab.n_images, rep.errors


@pytest.mark.slow
def test_kills_lose_nothing_release(lab):
    tallies = crash_tallies(lab, Counts(), seed=2, log=lambda _: None)
    assert [t.trials for t in tallies] == [100, 100, 100, 100]
    _assert_clean(tallies)

"""Searches during adds, deletes, index runs and compactions: no errors, and every answer is
one committed state."""

from __future__ import annotations

import pytest

from cbir.index import vector_index
from cbir.index.store import IndexStore, NewImage
from cbir.search.searcher import Searcher
from cbir_testing.reliability.suite import Counts, concurrency_tallies


def test_searches_during_writes_fast(tmp_path):
    tallies = concurrency_tallies(tmp_path, Counts.quick(), log=lambda _: None)
    for t in tallies:
        assert t.trials > 20, t.fault  # the readers really searched while the writer wrote
        assert t.failures == 0, (t.fault, t.details[:3])


@pytest.mark.slow
def test_searches_during_writes_release(tmp_path):
    tallies = concurrency_tallies(tmp_path, Counts(), log=lambda _: None)
    for t in tallies:
        assert t.trials > 100 and t.failures == 0, (t.fault, t.details[:3])


class _Overtaken(Searcher):
    """A Searcher after whose first index load another writer commits (add + delete)."""

    commit = None

    def refresh(self) -> None:
        super().refresh()
        if self.commit is not None:
            commit, self.commit = self.commit, None
            commit()


def test_a_search_overtaken_by_a_commit_answers_from_one_state(small_index):
    """Regression: Searcher searched the index of generation G and read the rows of G+1, so
    a commit that adds one image and deletes another gave an answer from neither state."""
    _, idx = small_index
    searcher = _Overtaken(idx)
    feats = searcher.store.features([1])
    before = {h.id for h in searcher.search_features(feats, 100)[0]}

    def add_and_delete() -> None:
        store = IndexStore.open(idx)
        try:
            store.lock()
            src = store.row(2)
            im = NewImage("/elsewhere/copy.jpg", src["sha256"], src["size"], src["mtime_ns"])
            store.commit([im], store.features([2]), deleted=[3])
            vector_index.refresh(store)
        finally:
            store.close()

    searcher.commit = add_and_delete
    after = {h.id for h in searcher.search_features(feats, 100)[0]}
    searcher.close()
    assert 3 in before and 3 not in after
    assert after == (before - {3}) | {max(after)} and max(after) not in before

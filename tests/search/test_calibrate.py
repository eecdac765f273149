"""`cbir calibrate`: the no-match threshold from labelled data."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cbir.search.calibrate import calibrate, choose_threshold
from tests.conftest import FASHION_ROOT, needs_fashion


def test_choose_threshold_worked_example():
    scores = np.array([0.9, 0.8, 0.8, 0.7, 0.6, 0.5])
    right = np.array([1, 1, 0, 1, 0, 0], bool)
    # cut after 0.9: 1/1; after the 0.8 tie: 2/3; after 0.7: 3/4; after 0.6: 3/5
    assert choose_threshold(scores, right, 0.75) == {"score": 0.7, "precision": 0.75, "recall": 1.0}
    assert choose_threshold(scores, right, 0.7)["score"] == 0.7
    got = choose_threshold(scores, right, 0.9)
    assert got["score"] == 0.9 and got["recall"] == pytest.approx(1 / 3)
    assert choose_threshold(scores, right, 0.66)["score"] == 0.7
    # a cut never splits a tie: the right 0.8 comes with the wrong 0.8
    tie = choose_threshold(np.array([0.9, 0.8, 0.8]), np.array([True, True, False]), 0.9)
    assert tie == {"score": 0.9, "precision": 1.0, "recall": 0.5}
    none = choose_threshold(np.array([0.5, 0.4]), np.array([False, False]), 0.5)
    assert none["recall"] == 0.0 and none["score"] > 0.5


@needs_fashion
def test_calibrate_stores_a_threshold_that_meets_the_target(tmp_path, photos_dir, monkeypatch):
    from cbir.data.idx import read_idx
    from cbir.index.store import IndexStore
    from cbir.pipeline import index_folder

    monkeypatch.setenv("CBIR_CACHE", str(tmp_path / "cache"))
    imgs = read_idx(FASHION_ROOT / "t10k-images-idx3-ubyte.gz")[:400]
    labels = read_idx(FASHION_ROOT / "t10k-labels-idx1-ubyte.gz")[:400]
    folder = tmp_path / "labelled"
    for i, (a, y) in enumerate(zip(imgs, labels, strict=True)):
        (folder / f"c{y}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(folder / f"c{y}" / f"{i}.png")
    index_folder(photos_dir, tmp_path / "idx", progress=False)
    res = calibrate(str(tmp_path / "idx"), str(folder), precision=0.5, limit=400, progress=False)
    assert res["precision"] >= 0.5 and 0 < res["recall"] <= 1
    assert res["negatives"] > 0 and res["generated_rejects"] >= 10
    store = IndexStore.open(tmp_path / "idx")
    try:
        assert store.get_meta("threshold")["score"] == pytest.approx(res["score"])
    finally:
        store.close()

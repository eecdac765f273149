"""Honest splits: a folder without train/ and test/ gets a seeded, stratified split, and
training and evaluating on the same images needs --eval-on-train and warns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbir.data.base import ImageSet
from cbir.errors import CbirError
from cbir.eval.protocols import resolve, split_folder
from cbir.train.data import run_splits, split_info
from cbir.train.registry import make_config
from tests.conftest import needs_fashion


def _labels_only(labels: list[int]) -> ImageSet:
    def never(i: int) -> Image.Image:
        raise AssertionError("a split must not decode images")

    return ImageSet("f/all", np.asarray(labels), never, [f"f/{i}.png" for i in range(len(labels))])


LABELS = [0] * 10 + [1] * 7 + [2] * 1 + [3] * 2 + [4] * 4


def test_same_classes_split_is_stratified_complete_and_seeded():
    images = _labels_only(LABELS)
    s = split_folder(images, "same-classes", seed=0, train_fraction=0.5)
    assert s.database is None  # the held-out images query each other
    train, held = set(s.train.keys), set(s.query.keys)
    assert not train & held and len(train | held) == len(LABELS)
    # per class: round(n / 2) trained, at least one held out; a lone image is held out
    assert np.bincount(s.train.labels, minlength=5).tolist() == [5, 4, 0, 1, 2]
    assert np.bincount(s.query.labels, minlength=5).tolist() == [5, 3, 1, 1, 2]
    assert s.sizes() == {"train": 12, "query": 12, "database": 11}
    assert split_folder(images, "same-classes", seed=0).train.keys == s.train.keys
    assert split_folder(images, "same-classes", seed=1).train.keys != s.train.keys
    s8 = split_folder(images, "same-classes", seed=0, train_fraction=0.8)
    assert np.bincount(s8.train.labels, minlength=5).tolist() == [8, 6, 0, 1, 3]


def test_zero_shot_split_holds_out_whole_classes():
    images = _labels_only(LABELS)
    s = split_folder(images, "zero-shot", seed=3, train_fraction=0.6)
    seen, unseen = set(s.train.labels.tolist()), set(s.query.labels.tolist())
    assert len(seen) == 3 and len(unseen) == 2 and not seen & unseen
    assert len(s.train) + len(s.query) == len(LABELS)
    assert split_folder(images, "zero-shot", seed=3, train_fraction=0.6).query.keys == s.query.keys
    others = {
        tuple(sorted(set(split_folder(images, "zero-shot", seed=k).train.labels.tolist())))
        for k in range(8)
    }
    assert len(others) > 1  # the seed chooses the classes
    with pytest.raises(CbirError, match="at least 2 classes"):
        split_folder(_labels_only([0, 0, 0]), "zero-shot")
    with pytest.raises(CbirError, match="between 0 and 1"):
        split_folder(images, "same-classes", train_fraction=1.0)


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "shapes"
    for c, n in (("red", 6), ("green", 5), ("blue", 4)):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (30 * i, 60, 0)).save(root / c / f"{c}{i}.png")
    return root


def test_a_folder_is_split_only_when_asked_and_a_split_folder_refuses_split(folder, tmp_path):
    proto, _ds, s = resolve(str(folder))
    assert proto.name == "all-vs-all" and len(s.query) == 15  # the frozen model: every image
    proto, _ds, s = resolve(str(folder), split="zero-shot", seed=0)
    assert proto.name == "zero-shot" and s.overlap() == 0
    split = tmp_path / "split"
    for part in ("train", "test"):
        (split / part / "red").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(split / part / "red" / "a.png")
    with pytest.raises(CbirError, match="leave out --split"):
        resolve(str(split), split="same-classes")


def _cfg(folder: Path, **kw):
    return make_config(dataset=str(folder), method="itq", bits=16, **kw)


def test_the_warning_appears_exactly_when_training_and_query_images_overlap(folder):
    proto, _ds, train, query, db = run_splits(_cfg(folder))  # default: same-classes
    info = split_info(proto, train, query, db)
    assert proto.name == "same-classes" and info["overlap"] == 0 and info["warning"] is None
    assert info["sizes"] == {"train": 8, "query": 7, "database": 6}
    assert "8 training images (3 classes), 7 held-out images" in info["line"]
    proto, _ds, train, query, db = run_splits(_cfg(folder, split="zero-shot"))
    assert split_info(proto, train, query, db)["warning"] is None
    proto, _ds, train, query, db = run_splits(_cfg(folder, eval_on_train=True))
    info = split_info(proto, train, query, db)
    assert info["overlap"] == 15 and "own training images" in info["warning"]
    with pytest.raises(CbirError, match="drop --split"):
        run_splits(_cfg(folder, eval_on_train=True, split="same-classes"))
    # a holdout queries images that are not trained on: no warning
    proto, _ds, train, query, db = run_splits(_cfg(folder, split="same-classes", holdout=3))
    assert split_info(proto, train, query, db)["warning"] is None


def _cbir(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cbir.cli", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=600,
    )


@needs_fashion
def test_train_and_evaluate_print_the_split_and_warn_on_training_images(tmp_path):
    from cbir.data.registry import open_dataset

    test = open_dataset("fashion-mnist")["test"]
    root = tmp_path / "fm"
    for c in (0, 1, 7):
        (root / str(c)).mkdir(parents=True)
        for i in np.flatnonzero(test.labels == c)[:14]:
            test.load(int(i)).save(root / str(c) / f"{i}.png")
    common = (
        "--method",
        "itq",
        "--bits",
        "16",
        "--size",
        "64",
        "--eval-every",
        "0",
        "--tsne-points",
        "0",
    )
    r = _cbir("train", "--dataset", str(root), *common, "--out", str(tmp_path / "honest"))
    assert r.returncode == 0, r.stderr
    assert "split: same-classes: 21 training images (3 classes), 21 held-out" in r.stdout
    assert "warning" not in r.stdout + r.stderr
    final = json.loads((tmp_path / "honest" / "final.json").read_text())
    assert final["split"]["overlap"] == 0 and "warning" not in final
    # evaluating that run on the folder uses its split: no overlap, no warning
    r = _cbir("evaluate", "--dataset", str(root), "--model", str(tmp_path / "honest"), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["split"]["name"] == "same-classes" and out["n_queries"] == 21
    assert out["warning"] is None
    run = tmp_path / "self"
    r = _cbir("train", "--dataset", str(root), *common, "--out", str(run), "--eval-on-train")
    assert r.returncode == 0, r.stderr
    assert "warning: evaluated on its own training images" in r.stdout
    assert "warning" in r.stderr
    assert "own training images" in json.loads((run / "final.json").read_text())["warning"]
    r = _cbir("evaluate", "--dataset", str(root), "--model", str(run))
    assert r.returncode == 1 and "--eval-on-train" in r.stderr and "Traceback" not in r.stderr
    report = tmp_path / "report"
    r = _cbir(
        "evaluate",
        "--dataset",
        str(root),
        "--model",
        str(run),
        "--eval-on-train",
        "--out",
        str(report),
    )
    assert r.returncode == 0, r.stderr
    assert "warning:  evaluated on the model's own training images (42 of the 42" in r.stdout
    assert "**Warning:** evaluated on the model's own" in (report / "report.md").read_text()


def test_evaluate_knows_what_a_run_was_trained_on(folder):
    from cbir.eval.run import _trained_on

    # a run made before folders were split trained on every image
    assert len(_trained_on({"dataset": str(folder)})) == 15
    assert len(_trained_on({"dataset": str(folder), "split": None})) == 8  # the default
    zs = _trained_on({"dataset": str(folder), "split": "zero-shot", "train_fraction": 0.5})
    assert len(zs) in (9, 10, 11) and len({Path(k).parent.name for k in zs}) == 2
    assert len(_trained_on({"dataset": str(folder), "split": None, "eval_on_train": True})) == 15
    assert _trained_on({"dataset": str(folder / "gone")}) is None

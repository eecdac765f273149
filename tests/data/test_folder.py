import os

import numpy as np
import pytest
from PIL import Image

from cbir.data.folder import find_images, load_imagefolder
from cbir.data.registry import open_dataset
from cbir.errors import CbirError


def _img(path, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (16, 16, 3), np.uint8)).save(
        path, "PNG"
    )


def test_find_images_by_content_not_only_suffix(tmp_path):
    _img(tmp_path / "a.png")
    _img(tmp_path / "no_suffix")  # a PNG without an extension
    (tmp_path / "fake.jpg").write_text("text")  # claims an image: returned so it gets reported
    (tmp_path / "notes.txt").write_text("text")
    (tmp_path / ".hidden").mkdir()
    _img(tmp_path / ".hidden" / "h.png")
    (tmp_path / "d").mkdir()
    _img(tmp_path / "d" / "b.png")
    os.symlink(tmp_path, tmp_path / "d" / "loop")  # a symlink loop is not followed
    found = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)]
    assert found == ["a.png", "d/b.png", "fake.jpg", "no_suffix"]


def test_find_images_missing_folder(tmp_path):
    with pytest.raises(CbirError, match="no such file"):
        find_images(tmp_path / "missing")


def test_imagefolder_layout_and_splits(tmp_path):
    for split in ("train", "test"):
        for c in ("cat", "dog"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(2):
                _img(tmp_path / split / c / f"{i}.png", i)
    ds = open_dataset(str(tmp_path))
    assert ds.name == tmp_path.name and set(ds.splits) == {"train", "test"}
    assert list(ds["train"].labels) == [0, 0, 1, 1]
    assert ds["train"].class_names == ["cat", "dog"]
    assert ds["test"].load(0).mode == "RGB"
    flat = load_imagefolder(tmp_path / "train")
    assert len(flat["all"]) == 4


def test_unknown_layout_is_a_clear_error(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(CbirError, match="unknown dataset layout"):
        open_dataset(str(tmp_path))
    with pytest.raises(CbirError, match="unknown dataset"):
        open_dataset("no-such-dataset-name")

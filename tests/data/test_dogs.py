"""Stanford Dogs reader on tiny Images/ + train_list.mat/test_list.mat in the real layout."""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.io
from PIL import Image

from cbir.data import dogs
from cbir.data.registry import open_dataset
from cbir.errors import CbirError

BREEDS = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02116738-African_hunting_dog"]
TRAIN = [(0, "n02085620_10074"), (1, "n02085782_1039"), (2, "n02116738_1105"), (2, "n02116738_124")]
TEST = [(1, "n02085782_1058"), (0, "n02085620_1152")]


def _write_list(path, rows):
    files = [f"{BREEDS[c]}/{stem}.jpg" for c, stem in rows]
    n = len(rows)
    file_list = np.empty((n, 1), dtype=object)
    file_list[:, 0] = files
    annotation_list = np.empty((n, 1), dtype=object)
    annotation_list[:, 0] = [f.removesuffix(".jpg") for f in files]
    labels = np.asarray([[c + 1] for c, _ in rows], dtype=np.float64)  # 1-based doubles
    scipy.io.savemat(
        path, {"file_list": file_list, "annotation_list": annotation_list, "labels": labels}
    )
    for i, f in enumerate(files):
        (path.parent / "Images" / f).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 6, 3), 50 * i, np.uint8)).save(path.parent / "Images" / f)


@pytest.fixture
def dogs_root(tmp_path):
    _write_list(tmp_path / "train_list.mat", TRAIN)
    _write_list(tmp_path / "test_list.mat", TEST)
    return tmp_path


def test_dogs(dogs_root):
    for ds in (dogs.load_dogs(dogs_root), open_dataset(str(dogs_root))):
        assert ds.name == "stanford-dogs" and set(ds.splits) == {"train", "test"}
        assert ds["train"].labels.tolist() == [0, 1, 2, 2]
        assert ds["test"].labels.tolist() == [1, 0]
        assert ds.class_names == ["Chihuahua", "Japanese_spaniel", "African_hunting_dog"]
        test = ds["test"]
        assert test.keys == test.paths
        assert test.paths[1] == str(
            dogs_root / "Images" / "n02085620-Chihuahua" / "n02085620_1152.jpg"
        )
        img = test.load(1)
        assert img.mode == "RGB" and img.size == (6, 8)


def test_dogs_missing_files(dogs_root):
    ds = dogs.load_dogs(dogs_root)
    os.remove(ds["train"].paths[3])
    with pytest.raises(CbirError, match="n02116738_124.jpg"):
        ds["train"].load(3)
    os.remove(dogs_root / "test_list.mat")
    with pytest.raises(CbirError, match="test_list.mat"):
        dogs.load_dogs(dogs_root)

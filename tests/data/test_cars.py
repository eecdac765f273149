"""Cars196 reader on a tiny cars_annos.mat + car_ims/ in the real layout."""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.io
from PIL import Image

from cbir.data import cars
from cbir.data.registry import open_dataset
from cbir.errors import CbirError

CLASSES = [1, 1, 2, 2, 3, 3, 4, 4]  # 1-based, as in the file
TEST = [0, 1, 0, 1, 1, 0, 0, 1]
NAMES = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012",
         "Acura TL Type-S 2008"]  # fmt: skip


@pytest.fixture
def cars_root(tmp_path):
    (tmp_path / "car_ims").mkdir()
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    ann = np.zeros((1, len(CLASSES)), dtype=[(f, object) for f in fields])
    for i, (c, t) in enumerate(zip(CLASSES, TEST, strict=True)):
        rel = f"car_ims/{i + 1:06d}.jpg"
        Image.fromarray(np.full((6, 9, 3), 20 * i, np.uint8)).save(tmp_path / rel)
        ann[0, i] = (
            rel,
            np.uint8(1),
            np.uint8(2),
            np.uint16(8),
            np.uint8(5),
            np.uint8(c),
            np.uint8(t),
        )
    names = np.empty((1, len(NAMES)), dtype=object)
    names[0, :] = NAMES
    scipy.io.savemat(tmp_path / "cars_annos.mat", {"annotations": ann, "class_names": names})
    return tmp_path


def test_cars(cars_root):
    mat = scipy.io.loadmat(cars_root / "cars_annos.mat")  # the fixture is a 1xN struct array
    assert (
        mat["annotations"].shape == (1, 8) and "relative_im_path" in mat["annotations"].dtype.names
    )
    for ds in (cars.load_cars(cars_root), open_dataset(str(cars_root))):
        assert ds.name == "cars196"
        assert set(ds.splits) == {"train", "test", "zs-train", "zs-test"}
        assert ds["train"].labels.tolist() == [0, 1, 2, 3]
        assert ds["test"].labels.tolist() == [0, 1, 2, 3]
        assert ds["zs-train"].labels.tolist() == [0, 0, 1, 1]
        assert ds["zs-test"].labels.tolist() == [2, 2, 3, 3]
        assert list(ds.class_names) == NAMES
        test = ds["test"]
        assert test.keys == test.paths
        assert test.paths == [str(cars_root / "car_ims" / f"{i:06d}.jpg") for i in (2, 4, 5, 8)]
        img = test.load(1)
        assert img.mode == "RGB" and img.size == (9, 6)
        assert abs(img.getpixel((1, 1))[1] - 60) <= 2


def test_cars_missing_files(cars_root):
    ds = cars.load_cars(cars_root)
    os.remove(ds["zs-test"].paths[0])
    with pytest.raises(CbirError, match="000005.jpg"):
        ds["zs-test"].load(0)
    os.remove(cars_root / "cars_annos.mat")
    with pytest.raises(CbirError, match="cars_annos.mat"):
        cars.load_cars(cars_root)

"""CUB-200-2011 reader on a tiny copy of the real CUB_200_2011/ layout."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from cbir.data import cub
from cbir.data.registry import open_dataset
from cbir.errors import CbirError

# 4 classes, 2 images each; zs-train = classes 1-2, zs-test = classes 3-4.
CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross",
           "004.Groove_billed_Ani"]  # fmt: skip
IS_TRAIN = [1, 0, 0, 1, 1, 0, 1, 0]


@pytest.fixture
def cub_root(tmp_path):
    base = tmp_path / "CUB_200_2011"
    images, labels, split = [], [], []
    for i in range(8):
        c = i // 2
        rel = f"{CLASSES[c]}/{CLASSES[c].split('.')[1]}_{i:04d}_{100 + i}.jpg"
        (base / "images" / CLASSES[c]).mkdir(parents=True, exist_ok=True)
        mode = "L" if i == 5 else "RGB"  # CUB has a few grayscale JPEGs
        Image.fromarray(np.full((12, 10, 3), 30 * i, np.uint8)).convert(mode).save(
            base / "images" / rel
        )
        images.append(f"{i + 1} {rel}\n")
        labels.append(f"{i + 1} {c + 1}\n")
        split.append(f"{i + 1} {IS_TRAIN[i]}\n")
    (base / "images.txt").write_text("".join(images))
    (base / "image_class_labels.txt").write_text("".join(labels))
    (base / "train_test_split.txt").write_text("".join(split))
    (base / "classes.txt").write_text("".join(f"{c + 1} {n}\n" for c, n in enumerate(CLASSES)))
    return tmp_path


def test_cub(cub_root):
    for ds in (
        cub.load_cub(cub_root),
        open_dataset(str(cub_root)),
        open_dataset(str(cub_root / "CUB_200_2011")),
    ):
        assert ds.name == "cub200"
        assert set(ds.splits) == {"train", "test", "zs-train", "zs-test"}
        assert ds["train"].labels.tolist() == [0, 1, 2, 3]
        assert ds["test"].labels.tolist() == [0, 1, 2, 3]
        assert ds["zs-train"].labels.tolist() == [0, 0, 1, 1]
        assert ds["zs-test"].labels.tolist() == [2, 2, 3, 3]
        assert ds.class_names[0] == "Black_footed_Albatross" and len(ds.class_names) == 4
        test = ds["test"]
        assert test.keys == test.paths and test.paths[2].endswith("Sooty_Albatross_0005_105.jpg")
        assert os.path.isfile(test.paths[2])
        img = test.load(2)  # the grayscale one
        assert img.mode == "RGB" and img.size == (10, 12)
        assert abs(img.getpixel((4, 4))[0] - 150) <= 2


def test_cub_missing_split_file(cub_root):
    os.remove(cub_root / "CUB_200_2011" / "train_test_split.txt")
    with pytest.raises(CbirError, match="train_test_split.txt"):
        cub.load_cub(cub_root)


def test_cub_missing_image(cub_root):
    ds = cub.load_cub(cub_root)
    os.remove(ds["train"].paths[1])
    with pytest.raises(CbirError, match="Laysan_Albatross_0003_103.jpg"):
        ds["train"].load(1)

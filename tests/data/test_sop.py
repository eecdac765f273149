"""Stanford Online Products reader on tiny Ebay_*.txt lists in the real layout."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from cbir.data import sop
from cbir.data.registry import open_dataset
from cbir.errors import CbirError

HEADER = "image_id class_id super_class_id path\n"
TRAIN = [(1, 1, "bicycle_final/111085122871_0.JPG"), (1, 1, "bicycle_final/111085122871_1.JPG"),
         (2, 2, "cabinet_final/110815307422_0.JPG")]  # fmt: skip
TEST = [(3, 1, "bicycle_final/111265328556_0.JPG"), (4, 3, "chair_final/111344963218_0.JPG"),
        (4, 3, "chair_final/111344963218_2.JPG")]  # fmt: skip


def _write(path, rows, start):
    path.write_text(
        HEADER + "".join(f"{start + i} {c} {s} {p}\n" for i, (c, s, p) in enumerate(rows))
    )


@pytest.fixture
def sop_root(tmp_path):
    base = tmp_path / "Stanford_Online_Products"
    for i, (_, _, p) in enumerate(TRAIN + TEST):
        (base / p).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((5, 7, 3), 40 * i, np.uint8)).save(base / p, format="JPEG")
    _write(base / "Ebay_train.txt", TRAIN, 1)
    _write(base / "Ebay_test.txt", TEST, len(TRAIN) + 1)
    (base / "Ebay_info.txt").write_text("image_id class_id super_class_id path\n")
    return tmp_path


def test_sop(sop_root):
    base = sop_root / "Stanford_Online_Products"
    for ds in (sop.load_sop(sop_root), open_dataset(str(sop_root)), open_dataset(str(base))):
        assert ds.name == "sop" and set(ds.splits) == {"train", "test"}
        assert ds["train"].labels.tolist() == [0, 0, 1]
        assert ds["test"].labels.tolist() == [2, 3, 3]
        assert ds.class_names == ["bicycle/1", "cabinet/2", "bicycle/3", "chair/4"]
        assert [ds.class_names[y].split("/")[0] for y in ds["test"].labels] == [
            "bicycle",
            "chair",
            "chair",
        ]
        test = ds["test"]
        assert test.keys == test.paths and test.paths[1] == str(
            base / "chair_final/111344963218_0.JPG"
        )
        img = test.load(1)
        assert img.mode == "RGB" and img.size == (7, 5)


def test_sop_missing_files(sop_root):
    ds = sop.load_sop(sop_root)
    os.remove(ds["train"].paths[2])
    with pytest.raises(CbirError, match="110815307422_0.JPG"):
        ds["train"].load(2)
    os.remove(sop_root / "Stanford_Online_Products" / "Ebay_test.txt")
    with pytest.raises(CbirError, match="Ebay_test.txt"):
        sop.load_sop(sop_root)

"""NUS-WIDE reader on tiny database.txt / test.txt / train.txt lists (DeepHash-pytorch layout)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from cbir.data import nuswide
from cbir.data.registry import open_dataset
from cbir.errors import CbirError

C = 21


def _labels(*on):
    row = np.zeros(C, np.uint8)
    row[list(on)] = 1
    return row


DB = [("images/83796_799247112_276c55a843_m.jpg", _labels(0, 1)),
      ("images/47923_1738169948_240c46395c_m.jpg", _labels(8, 12)),
      ("images/62056_2480510712_bd12a38835_m.jpg", _labels(10))]  # fmt: skip
TEST = [("images/167250_2352750842_c371a4fb21_m.jpg", _labels(0, 13))]


def _write(path, rows):
    path.write_text("".join(f"{p} {' '.join(map(str, y))}\n" for p, y in rows))


@pytest.fixture
def nus_root(tmp_path):
    (tmp_path / "images").mkdir()
    for i, (p, _) in enumerate(DB + TEST):
        Image.fromarray(np.full((4, 4, 3), 60 * i, np.uint8)).save(tmp_path / p)
    _write(tmp_path / "database.txt", DB)
    _write(tmp_path / "test.txt", TEST)
    _write(tmp_path / "train.txt", DB[:2])
    return tmp_path


def test_nuswide(nus_root):
    for ds in (nuswide.load_nuswide(nus_root), open_dataset(str(nus_root))):
        assert ds.name == "nuswide" and set(ds.splits) == {"train", "query", "database"}
        db, q = ds["database"], ds["query"]
        assert db.multilabel and q.multilabel and ds["train"].multilabel
        assert db.labels.dtype == np.uint8 and db.labels.shape == (3, C)
        assert np.array_equal(db.labels, np.stack([y for _, y in DB]))
        assert np.array_equal(q.labels[0], TEST[0][1]) and len(ds["train"]) == 2
        assert db.keys == db.paths and db.paths[1] == str(nus_root / DB[1][0])
        img = q.load(0)
        assert img.mode == "RGB" and img.size == (4, 4)


def test_nuswide_strips_foreign_prefix(nus_root):
    # Lists written on another machine: absolute paths to an images/ folder elsewhere.
    for name, rows in (("database.txt", DB), ("test.txt", TEST), ("train.txt", DB[:2])):
        _write(nus_root / name, [(f"/data/nus_wide/{p}", y) for p, y in rows])
    ds = nuswide.load_nuswide(nus_root)
    assert ds["database"].paths[0] == str(nus_root / DB[0][0])
    assert ds["query"].load(0).size == (4, 4)


def test_nuswide_missing_files(nus_root):
    ds = nuswide.load_nuswide(nus_root)
    os.remove(ds["database"].paths[2])
    with pytest.raises(CbirError, match="62056_2480510712_bd12a38835_m.jpg"):
        ds["database"].load(2)
    os.remove(nus_root / "test.txt")
    with pytest.raises(CbirError, match="test.txt"):
        nuswide.load_nuswide(nus_root)

"""DeepFashion In-shop reader on a tiny list_eval_partition.txt + img/ in the real layout."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from cbir.data import inshop
from cbir.data.registry import open_dataset
from cbir.errors import CbirError

ROWS = [
    ("img/WOMEN/Dresses/id_00000002/02_1_front.jpg", "id_00000002", "train"),
    ("img/WOMEN/Dresses/id_00000002/02_2_side.jpg", "id_00000002", "train"),
    ("img/MEN/Denim/id_00000080/01_1_front.jpg", "id_00000080", "query"),
    ("img/MEN/Denim/id_00000080/01_2_side.jpg", "id_00000080", "gallery"),
    ("img/WOMEN/Skirts/id_00000011/01_1_front.jpg", "id_00000011", "gallery"),
    ("img/WOMEN/Skirts/id_00000011/01_3_back.jpg", "id_00000011", "query"),
    ("img/WOMEN/Skirts/id_00000011/01_4_full.jpg", "id_00000011", "gallery"),
]


@pytest.fixture
def inshop_root(tmp_path):
    (tmp_path / "Eval").mkdir()
    lines = [f"{len(ROWS)}\n", "image_name item_id evaluation_status\n"]
    lines += [f"{p:<60}{item:<20}{status}\n" for p, item, status in ROWS]  # padded, like the file
    (tmp_path / "Eval" / "list_eval_partition.txt").write_text("".join(lines))
    for i, (p, _, _) in enumerate(ROWS):
        (tmp_path / "Img" / p).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 8, 3), 30 * i, np.uint8)).save(tmp_path / "Img" / p)
    return tmp_path


def test_inshop(inshop_root):
    for ds in (inshop.load_inshop(inshop_root), open_dataset(str(inshop_root))):
        assert ds.name == "inshop"
        assert set(ds.splits) == {"train", "query", "gallery", "database"}
        assert ds["database"] is ds["gallery"]
        assert ds.class_names == ["id_00000002", "id_00000011", "id_00000080"]
        assert ds["train"].labels.tolist() == [0, 0]
        assert ds["query"].labels.tolist() == [2, 1]
        assert ds["gallery"].labels.tolist() == [2, 1, 1]
        q = ds["query"]
        assert q.keys == q.paths and q.paths[0] == str(inshop_root / "Img" / ROWS[2][0])
        img = q.load(1)
        assert img.mode == "RGB" and img.size == (8, 16)


def test_inshop_missing_files(inshop_root):
    ds = inshop.load_inshop(inshop_root)
    os.remove(ds["gallery"].paths[2])
    with pytest.raises(CbirError, match="01_4_full.jpg"):
        ds["gallery"].load(2)
    os.remove(inshop_root / "Eval" / "list_eval_partition.txt")
    with pytest.raises(CbirError, match="list_eval_partition.txt"):
        inshop.load_inshop(inshop_root)

"""DeepFashion In-shop Clothes Retrieval benchmark.

Liu et al., *DeepFashion: Powering Robust Clothes Recognition and Retrieval with Rich
Annotations*, CVPR 2016 (https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion.html).
``list_eval_partition.txt`` (in the root or in ``Eval/``): line 1 the row count, line 2 the
header "image_name item_id evaluation_status", then "img/<...>.jpg id_<n> train|query|gallery";
image paths are relative to the folder holding ``img/`` (the root, or ``Img/``).
52,712 images of 7,982 items.

Splits: "train" (25,882 images, 3,997 items), "query" (14,218, 3,985 items) and "gallery"
(12,612, the same 3,985 items; also under "database"). Labels index the sorted item ids of
the whole file, so one item has the same label in query and gallery.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cbir.data.base import Dataset, ImageSet, file_loader
from cbir.data.registry import Layout
from cbir.errors import CbirError

NAME = "inshop"
LIST = "list_eval_partition.txt"
HEADER = ["image_name", "item_id", "evaluation_status"]
SPLITS = ("train", "query", "gallery")


def _list_path(root: Path) -> Path:
    for d in (root, root / "Eval"):
        if (d / LIST).is_file():
            return d / LIST
    return root / LIST


def _detect(root: Path) -> bool:
    path = _list_path(root)
    try:
        with open(path, encoding="utf-8") as f:
            f.readline()
            return f.readline().split() == HEADER
    except (OSError, UnicodeDecodeError):
        return False


def load_inshop(root: Path) -> Dataset:
    """Read In-shop under ``root`` (lazily: images are opened when loaded)."""
    root = Path(root)
    path = _list_path(root)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise CbirError(f"{path}: missing (In-shop's Eval/{LIST}; put it here)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CbirError(f"{path}: cannot read ({e})") from None
    if len(lines) < 2 or lines[1].split() != HEADER:
        raise CbirError(f"{path}: expected the header {' '.join(HEADER)!r} on line 2")
    rows = [line.split() for line in lines[2:] if line.strip()]
    for n, r in enumerate(rows, 3):
        if len(r) != 3 or r[2] not in SPLITS:
            raise CbirError(f"{path}:{n}: expected '<img> <item_id> train|query|gallery'")
    if lines[0].strip().isdigit() and int(lines[0]) != len(rows):
        raise CbirError(f"{path}: line 1 announces {lines[0].strip()} rows but has {len(rows)}")
    img_root = next((d for d in (root, root / "Img") if (d / "img").is_dir()), None)
    if img_root is None:
        raise CbirError(f"{root / 'img'}: missing image folder (extract Img/img.zip here)")
    items = sorted({r[1] for r in rows})
    index = {item: i for i, item in enumerate(items)}
    splits = {}
    for split in SPLITS:
        sel = [r for r in rows if r[2] == split]
        paths = [str(img_root / r[0]) for r in sel]
        labels = np.asarray([index[r[1]] for r in sel], dtype=np.int64)
        splits[split] = ImageSet(f"{NAME}/{split}", labels, file_loader(paths), paths, paths, items)
    splits["database"] = splits["gallery"]
    return Dataset(NAME, splits, items, str(root))


LAYOUT = Layout(
    name=NAME,
    description="DeepFashion In-shop (Liu 2016, 52,712 images, 7,982 items); splits train "
    "(25,882), query (14,218), gallery = database (12,612)",
    load=load_inshop,
    default_roots=[f"~/.cache/cbir/data/{NAME}"],
    detect=_detect,
    aliases=["deepfashion-inshop", "in-shop"],
)

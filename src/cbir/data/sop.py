"""Stanford Online Products (SOP), the ``Stanford_Online_Products/`` layout.

Oh Song et al., *Deep Metric Learning via Lifted Structured Feature Embedding*, CVPR 2016
(https://cvgl.stanford.edu/projects/lifted_struct/). ``Ebay_train.txt`` and
``Ebay_test.txt`` start with the header "image_id class_id super_class_id path" and list
"<id> <class> <super class> <super>_final/<file>.JPG"; the root may be
``Stanford_Online_Products/`` or the folder holding it. 120,053 images of 22,634 products.

Splits: "train" (11,318 classes, 59,551 images) and "test" (11,316 classes, 60,502 images).
Labels are ``class_id - 1``; ``class_names[label]`` is "<super class>/<class_id>" (e.g.
"bicycle/1"), so ``class_names[label].split("/")[0]`` gives an item's super-class (one of 12).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cbir.data.base import Dataset, ImageSet, file_loader
from cbir.data.registry import Layout
from cbir.errors import CbirError

NAME = "sop"
HEADER = ["image_id", "class_id", "super_class_id", "path"]


def _base(root: Path) -> Path | None:
    for d in (root, root / "Stanford_Online_Products"):
        if (d / "Ebay_train.txt").is_file():
            return d
    return None


def _read_list(path: Path) -> list[tuple[int, str]]:
    """(class_id, path) of each row of an Ebay_*.txt list."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise CbirError(f"{path}: missing (part of Stanford_Online_Products.zip)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CbirError(f"{path}: cannot read ({e})") from None
    if not lines or lines[0].split() != HEADER:
        raise CbirError(f"{path}: expected the header {' '.join(HEADER)!r} on line 1")
    rows = []
    for n, line in enumerate(lines[1:], 2):
        parts = line.split(maxsplit=3)
        if not parts:
            continue
        if len(parts) != 4 or not parts[1].isdigit() or int(parts[1]) < 1:
            raise CbirError(f"{path}:{n}: expected '{' '.join(HEADER)}', got {line[:80]!r}")
        rows.append((int(parts[1]), parts[3].strip()))
    return rows


def load_sop(root: Path) -> Dataset:
    """Read SOP under ``root`` (lazily: images are opened when loaded)."""
    root = Path(root)
    base = _base(root) or root
    rows = {s: _read_list(base / f"Ebay_{s}.txt") for s in ("train", "test")}
    n_classes = max(c for r in rows.values() for c, _ in r) if any(rows.values()) else 0
    classes = [str(c + 1) for c in range(n_classes)]
    for r in rows.values():
        for c, p in r:
            classes[c - 1] = f"{p.split('/', 1)[0].removesuffix('_final')}/{c}"
    splits = {}
    for split, r in rows.items():
        paths = [str(base / p) for _, p in r]
        splits[split] = ImageSet(
            name=f"{NAME}/{split}",
            labels=np.asarray([c - 1 for c, _ in r], dtype=np.int64),
            loader=file_loader(paths),
            keys=paths,
            paths=paths,
            class_names=classes,
        )
    return Dataset(NAME, splits, classes, str(root))


LAYOUT = Layout(
    name=NAME,
    description="Stanford Online Products (Oh Song 2016, 120,053 images, 22,634 products); "
    "splits train (11,318 classes, 59,551), test (11,316 classes, 60,502)",
    load=load_sop,
    default_roots=[f"~/.cache/cbir/data/{NAME}"],
    detect=lambda root: _base(root) is not None,
    aliases=["stanford-online-products"],
)

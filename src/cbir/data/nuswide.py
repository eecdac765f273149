"""NUS-WIDE, multi-label, in the list-file layout of the deep hashing code bases.

Chua et al., *NUS-WIDE: A Real-World Web Image Database from National University of
Singapore*, CIVR 2009. Lists as in HashNet (Cao et al., ICCV 2017) and DeepHash-pytorch
(https://github.com/swuxyj/DeepHash-pytorch): ``database.txt``, ``test.txt`` (the queries)
and ``train.txt``, each line "images/<file>.jpg 0 1 0 ..." with one 0/1 column per concept
(21, or 81). Image paths are relative to the root (a leading prefix that does not exist
there, e.g. an absolute path from another machine, is stripped).

Splits: "query" (from ``test.txt``), "database" and "train" (a subset of the database).
DeepHash-pytorch's ``nuswide_21`` (21 most frequent concepts, 195,834 images): query 2,100
(100 per concept), train 10,500 (500 per concept), database 193,734. Labels are ``(n, C)``
uint8 multi-hot rows; two images are relevant when they share a concept.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cbir.data.base import Dataset, ImageSet, file_loader
from cbir.data.registry import Layout
from cbir.errors import CbirError

NAME = "nuswide"
LISTS = {"train": "train.txt", "query": "test.txt", "database": "database.txt"}


def _read_list(path: Path) -> tuple[list[str], np.ndarray]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise CbirError(f"{path}: missing (the hashing papers' NUS-WIDE list file)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CbirError(f"{path}: cannot read ({e})") from None
    files, rows = [], []
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2 or any(p not in ("0", "1") for p in parts[1:]):
            raise CbirError(f"{path}:{n}: expected '<image path> 0 1 0 ...', got {line[:80]!r}")
        if rows and len(parts) - 1 != len(rows[0]):
            raise CbirError(
                f"{path}:{n}: {len(parts) - 1} label columns, line 1 has {len(rows[0])}"
            )
        files.append(parts[0])
        rows.append(parts[1:])
    if not files:
        raise CbirError(f"{path}: lists no images")
    return files, np.asarray(rows, dtype=np.uint8)


def _strip_count(root: Path, rel: str) -> int:
    """How many leading path components to drop so that ``rel`` exists under ``root``."""
    parts = Path(rel).parts
    for k in range(len(parts)):
        if (root.joinpath(*parts[k:])).exists():
            return k
    return 0


def load_nuswide(root: Path) -> Dataset:
    """Read NUS-WIDE lists under ``root`` (lazily: images are opened when loaded)."""
    root = Path(root)
    read = {s: _read_list(root / f) for s, f in LISTS.items() if s != "train"}
    if (root / LISTS["train"]).exists():
        read = {"train": _read_list(root / LISTS["train"]), **read}
    widths = {y.shape[1] for _, y in read.values()}
    if len(widths) != 1:
        raise CbirError(f"{root}: the list files have different label widths {sorted(widths)}")
    k = _strip_count(root, read["database"][0][0])
    splits = {}
    for split, (files, labels) in read.items():
        paths = [
            os.path.join(root, f) if k == 0 else os.path.join(root, *Path(f).parts[k:])
            for f in files
        ]
        splits[split] = ImageSet(f"{NAME}/{split}", labels, file_loader(paths), paths, paths)
    return Dataset(NAME, splits, [], str(root))


def _detect(root: Path) -> bool:
    """database.txt + test.txt whose rows have 21 or 81 label columns (or a 'nus' root)."""
    if not ((root / "database.txt").is_file() and (root / "test.txt").is_file()):
        return False
    try:
        with open(root / "database.txt", encoding="utf-8") as f:
            cols = len(f.readline().split()) - 1
    except (OSError, UnicodeDecodeError):
        return False
    return cols in (21, 81) or (cols > 0 and "nus" in root.name.lower())


LAYOUT = Layout(
    name=NAME,
    description="NUS-WIDE hashing lists database.txt/test.txt/train.txt, multi-label (Chua 2009); "
    "nuswide_21: query (2,100), train (10,500), database (193,734)",
    load=load_nuswide,
    default_roots=[f"~/.cache/cbir/data/{NAME}"],
    detect=_detect,
    aliases=["nus-wide"],
)

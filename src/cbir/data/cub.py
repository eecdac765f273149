"""Caltech-UCSD Birds-200-2011 (CUB-200-2011).

Wah et al., *The Caltech-UCSD Birds-200-2011 Dataset*, CNS-TR-2011-001
(https://www.vision.caltech.edu/datasets/cub_200_2011/). Layout of ``CUB_200_2011.tgz``:
``images.txt`` ("<id> <class dir>/<file>.jpg"), ``image_class_labels.txt`` ("<id> <class>"),
``train_test_split.txt`` ("<id> <1 = train>"), ``classes.txt`` and ``images/``; the root may
be ``CUB_200_2011/`` or the folder holding it. 11,788 images of 200 classes.

Splits: "train" (5,994) / "test" (5,794) from ``train_test_split.txt`` (the hashing
protocol: train is the database, test the queries); and the zero-shot metric-learning split
(Oh Song et al., CVPR 2016) "zs-train" = classes 1-100 (5,864 images) and "zs-test" =
classes 101-200 (5,924). Labels are 0-based class ids (class 1 -> 0) in every split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cbir.data.base import Dataset, ImageSet, file_loader
from cbir.data.registry import Layout
from cbir.errors import CbirError

NAME = "cub200"


def _base(root: Path) -> Path | None:
    for d in (root, root / "CUB_200_2011"):
        if (d / "images.txt").is_file() and (d / "image_class_labels.txt").is_file():
            return d
    return None


def _read_table(path: Path) -> dict[int, str]:
    """Read "<id> <value>" lines into {id: value}."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise CbirError(f"{path}: missing (part of CUB_200_2011.tgz; extract it here)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CbirError(f"{path}: cannot read ({e})") from None
    out = {}
    for n, line in enumerate(lines, 1):
        parts = line.split(maxsplit=1)
        if not parts:
            continue
        if len(parts) != 2 or not parts[0].isdigit():
            raise CbirError(f"{path}:{n}: expected '<id> <value>', got {line[:80]!r}")
        out[int(parts[0])] = parts[1].strip()
    return out


def _split(name: str, paths: list[str], labels: np.ndarray, mask: np.ndarray, classes: list[str]):
    sel = [p for p, m in zip(paths, mask, strict=True) if m]
    return ImageSet(
        name=f"{NAME}/{name}",
        labels=labels[mask],
        loader=file_loader(sel),
        keys=sel,
        paths=sel,
        class_names=classes,
    )


def load_cub(root: Path) -> Dataset:
    """Read CUB-200-2011 under ``root`` (lazily: images are opened when loaded)."""
    root = Path(root)
    base = _base(root) or root
    images = _read_table(base / "images.txt")
    cls = _read_table(base / "image_class_labels.txt")
    is_train = _read_table(base / "train_test_split.txt")
    names = _read_table(base / "classes.txt")
    if not (base / "images").is_dir():
        raise CbirError(f"{base / 'images'}: missing image folder (extract CUB_200_2011.tgz here)")
    ids = sorted(images)
    if not ids:
        raise CbirError(f"{base / 'images.txt'}: lists no images")
    for table, fname in ((cls, "image_class_labels.txt"), (is_train, "train_test_split.txt")):
        missing = [i for i in ids if i not in table]
        if missing:
            raise CbirError(f"{base / fname}: no entry for image id {missing[0]} of images.txt")
    paths = [str(base / "images" / images[i]) for i in ids]
    labels = np.asarray([int(cls[i]) - 1 for i in ids], dtype=np.int64)
    train = np.asarray([is_train[i].strip() == "1" for i in ids])
    n_classes = max(len(names), int(labels.max()) + 1)
    classes = [names.get(c + 1, str(c + 1)).split(".", 1)[-1] for c in range(n_classes)]
    zs = labels < n_classes // 2
    splits = {
        "train": _split("train", paths, labels, train, classes),
        "test": _split("test", paths, labels, ~train, classes),
        "zs-train": _split("zs-train", paths, labels, zs, classes),
        "zs-test": _split("zs-test", paths, labels, ~zs, classes),
    }
    return Dataset(NAME, splits, classes, str(root))


LAYOUT = Layout(
    name=NAME,
    description="CUB-200-2011 birds (Wah 2011, 11,788 images, 200 classes); splits train (5,994), "
    "test (5,794), zs-train (classes 1-100, 5,864), zs-test (101-200, 5,924)",
    load=load_cub,
    default_roots=[f"~/.cache/cbir/data/{NAME}"],
    detect=lambda root: _base(root) is not None,
    aliases=["cub", "cub-200-2011"],
)

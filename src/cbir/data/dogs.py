"""Stanford Dogs, the ``Images/`` + ``lists.tar`` layout.

Khosla et al., *Novel Dataset for Fine-Grained Image Categorization*, FGVC workshop,
CVPR 2011 (http://vision.stanford.edu/aditya86/ImageNetDogs/). ``images.tar`` extracts to
``Images/<wnid>-<breed>/<wnid>_<n>.jpg``; ``lists.tar`` to ``train_list.mat`` and
``test_list.mat`` (fields ``file_list``: paths relative to ``Images/``, ``labels``: 1-120),
beside ``Images/`` or in ``lists/``. 20,580 images of 120 breeds.

Splits: "train" (12,000, 100 per breed) and "test" (8,580). Labels are ``labels - 1``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cbir.data.base import Dataset, ImageSet, file_loader
from cbir.data.registry import Layout
from cbir.errors import CbirError

NAME = "stanford-dogs"


def _list_dir(root: Path) -> Path:
    for d in (root, root / "lists"):
        if (d / "train_list.mat").is_file():
            return d
    return root


def _read_list(path: Path) -> tuple[list[str], np.ndarray]:
    import scipy.io

    if not path.is_file():
        raise CbirError(f"{path}: missing (extract lists.tar from the Stanford Dogs page here)")
    try:
        mat = scipy.io.loadmat(str(path), squeeze_me=True)
    except Exception as e:  # scipy raises many types on bad input
        raise CbirError(f"{path}: cannot read as a MATLAB file ({type(e).__name__}: {e})") from None
    if "file_list" not in mat or "labels" not in mat:
        raise CbirError(f"{path}: no 'file_list' / 'labels'; not a Stanford Dogs list")
    files = [str(f) for f in np.atleast_1d(mat["file_list"])]
    labels = np.atleast_1d(mat["labels"]).astype(np.int64) - 1
    if len(files) != len(labels) or (len(labels) and labels.min() < 0):
        raise CbirError(f"{path}: {len(files)} files but {len(labels)} labels (1-based)")
    return files, labels


def load_dogs(root: Path) -> Dataset:
    """Read Stanford Dogs under ``root`` (lazily: images are opened when loaded)."""
    root = Path(root)
    lists = _list_dir(root)
    read = {s: _read_list(lists / f"{s}_list.mat") for s in ("train", "test")}
    if not (root / "Images").is_dir():
        raise CbirError(f"{root / 'Images'}: missing image folder (extract images.tar here)")
    n_classes = max((int(y.max()) + 1 for _, y in read.values() if len(y)), default=0)
    classes = [str(c + 1) for c in range(n_classes)]
    for files, labels in read.values():
        for f, y in zip(files, labels, strict=True):
            classes[y] = f.split("/", 1)[0].split("-", 1)[-1]  # n02085620-Chihuahua -> Chihuahua
    splits = {}
    for split, (files, labels) in read.items():
        paths = [str(root / "Images" / f) for f in files]
        splits[split] = ImageSet(
            f"{NAME}/{split}", labels, file_loader(paths), paths, paths, classes
        )
    return Dataset(NAME, splits, classes, str(root))


LAYOUT = Layout(
    name=NAME,
    description="Stanford Dogs, Images/ + train_list.mat/test_list.mat (Khosla 2011, 20,580 "
    "images, 120 breeds); splits train (12,000), test (8,580)",
    load=load_dogs,
    default_roots=[f"~/.cache/cbir/data/{NAME}"],
    detect=lambda root: (
        (root / "Images").is_dir() and (_list_dir(root) / "train_list.mat").is_file()
    ),
    aliases=["dogs"],
)

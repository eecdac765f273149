"""MNIST / Fashion-MNIST in LeCun's idx format (``*-idx3-ubyte[.gz]``).

Debian's ``dataset-fashion-mnist`` installs Fashion-MNIST to
``/usr/share/datasets/fashion-mnist``. Splits: "train" (60,000) and "test" (10,000).
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from cbir.data.base import Dataset, ImageSet, array_loader
from cbir.data.registry import Layout
from cbir.errors import CbirError

FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
MNIST_CLASSES = [str(i) for i in range(10)]
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one idx file (gzipped or not) into a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise CbirError(f"{path}: cannot read idx file ({e})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise CbirError(f"{path}: not an idx file (bad magic number)")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    dtype = np.dtype(_DTYPES[data[2]])
    body = data[4 + 4 * ndim :]
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(body) != expected:
        raise CbirError(f"{path}: truncated idx file ({len(body)} bytes, expected {expected})")
    return np.frombuffer(body, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def _find(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem, stem.replace("-idx", ".idx")):
        if (root / name).exists():
            return root / name
    raise CbirError(f"{root}: missing {stem}.gz (the idx files of MNIST / Fashion-MNIST)")


def load_idx(root: Path, name: str | None = None, class_names: list[str] | None = None) -> Dataset:
    """Read train/test splits of an MNIST-style idx dataset under ``root``."""
    root = Path(root)
    name = name or root.name
    if class_names is None:
        class_names = FASHION_CLASSES if "fashion" in name.lower() else MNIST_CLASSES
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(_find(root, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_find(root, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
        if len(images) != len(labels):
            raise CbirError(f"{root}: {split} has {len(images)} images but {len(labels)} labels")
        splits[split] = ImageSet(
            name=f"{name}/{split}",
            labels=labels,
            loader=array_loader(images),
            keys=[f"{name}/{split}:{i}" for i in range(len(labels))],
            class_names=class_names,
        )
    return Dataset(name, splits, class_names, str(root))


def detect_idx(root: Path) -> bool:
    """True if ``root`` holds idx image files."""
    return any(root.glob("*-images-idx3-ubyte*"))


LAYOUTS = [
    Layout(
        name="fashion-mnist",
        description="Fashion-MNIST idx .gz files (Zalando, 70k 28x28); splits train (60k), test (10k)",
        load=lambda root: load_idx(root, "fashion-mnist", FASHION_CLASSES),
        default_roots=["/usr/share/datasets/fashion-mnist", "~/.cache/cbir/data/fashion-mnist"],
        detect=lambda root: detect_idx(root) and "fashion" in str(root).lower(),
    ),
    Layout(
        name="mnist",
        description="MNIST idx .gz files (LeCun, 70k 28x28 digits); splits train (60k), test (10k)",
        load=lambda root: load_idx(root, "mnist", MNIST_CLASSES),
        default_roots=["/usr/share/datasets/mnist", "~/.cache/cbir/data/mnist"],
        detect=detect_idx,
    ),
]

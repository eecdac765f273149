"""CIFAR-10 and CIFAR-100, "python version" pickles.

Krizhevsky, *Learning Multiple Layers of Features from Tiny Images*, 2009
(https://www.cs.toronto.edu/~kriz/cifar.html). CIFAR-10: ``cifar-10-batches-py/`` with
``data_batch_1`` .. ``data_batch_5``, ``test_batch`` and ``batches.meta``. CIFAR-100:
``cifar-100-python/`` with ``train``, ``test`` and ``meta`` (labels are the 100 fine classes).
The root may be that folder or the folder holding it (torchvision's ``root``).
Splits: "train" (50,000 32x32 images) and "test" (10,000).

The pickles are read with an unpickler that only builds numpy arrays, so a hostile file
cannot run code.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from cbir.data.base import Dataset, ImageSet, array_loader
from cbir.data.registry import Layout
from cbir.errors import CbirError

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Builds numpy arrays and nothing else (numpy 1 and 2 module paths both accepted)."""

    def find_class(self, module: str, name: str):  # type: ignore[override]
        module = module.replace("numpy._core", "numpy.core", 1)
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core"):
            try:  # numpy >= 2 moved numpy.core to numpy._core
                return super().find_class(module.replace("numpy.core", "numpy._core", 1), name)
            except ImportError:
                pass
        return super().find_class(module, name)


def read_pickle(path: Path) -> dict[str, object]:
    """Read one CIFAR pickle (written by Python 2 or 3) into a dict with str keys."""
    try:
        with open(path, "rb") as f:
            d = _ArrayUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise CbirError(f"{path}: missing (extract the CIFAR python tarball here)") from None
    except Exception as e:  # pickle raises many types on bad input
        raise CbirError(f"{path}: not a CIFAR python pickle ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict):
        raise CbirError(f"{path}: not a CIFAR python pickle (no dict inside)")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in d.items()}


def _field(d: dict[str, object], key: str, path: Path) -> object:
    if key not in d:
        raise CbirError(f"{path}: no {key!r} entry; not a CIFAR python pickle")
    return d[key]


def _base(root: Path, sub: str, marker: str) -> Path | None:
    for d in (root / sub, root):
        if (d / marker).is_file():
            return d
    return None


def _load(
    root: Path, name: str, sub: str, meta: str, names_key: str, batches: dict, label_key: str
) -> Dataset:
    root = Path(root)
    base = _base(root, sub, meta) or root / sub
    class_names = [str(c) for c in _field(read_pickle(base / meta), names_key, base / meta)]  # type: ignore[attr-defined]
    splits = {}
    for split, files in batches.items():
        data, labels = [], []
        for fn in files:
            d = read_pickle(base / fn)
            try:
                data.append(np.asarray(_field(d, "data", base / fn), dtype=np.uint8))
                labels.append(np.asarray(_field(d, label_key, base / fn), dtype=np.int64))
            except (TypeError, ValueError) as e:
                raise CbirError(f"{base / fn}: bad 'data' or labels ({e})") from None
            if data[-1].ndim != 2 or data[-1].shape[1] != 3072 or len(data[-1]) != len(labels[-1]):
                raise CbirError(f"{base / fn}: expected (n, 3072) uint8 rows and n labels")
        images = np.concatenate(data).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        y = np.concatenate(labels)
        splits[split] = ImageSet(
            name=f"{name}/{split}",
            labels=y,
            loader=array_loader(images),
            keys=[f"{name}/{split}:{i}" for i in range(len(y))],
            class_names=class_names,
        )
    return Dataset(name, splits, class_names, str(root))


def load_cifar10(root: Path) -> Dataset:
    """Read CIFAR-10 (``cifar-10-batches-py``) under ``root``."""
    train = [f"data_batch_{i}" for i in range(1, 6)]
    return _load(
        root, "cifar10", "cifar-10-batches-py", "batches.meta", "label_names",
        {"train": train, "test": ["test_batch"]}, "labels",
    )  # fmt: skip


def load_cifar100(root: Path) -> Dataset:
    """Read CIFAR-100 (``cifar-100-python``) under ``root``, with fine labels."""
    return _load(
        root, "cifar100", "cifar-100-python", "meta", "fine_label_names",
        {"train": ["train"], "test": ["test"]}, "fine_labels",
    )  # fmt: skip


LAYOUTS = [
    Layout(
        name="cifar10",
        description="CIFAR-10 python pickles (Krizhevsky 2009, 32x32, 10 classes); splits train (50k), test (10k)",
        load=load_cifar10,
        default_roots=["~/.cache/cbir/data/cifar10"],
        detect=lambda root: _base(root, "cifar-10-batches-py", "batches.meta") is not None,
        aliases=["cifar-10"],
    ),
    Layout(
        name="cifar100",
        description="CIFAR-100 python pickles (Krizhevsky 2009, 32x32, 100 fine classes); splits train (50k), test (10k)",
        load=load_cifar100,
        default_roots=["~/.cache/cbir/data/cifar100"],
        detect=lambda root: (
            (b := _base(root, "cifar-100-python", "meta")) is not None and (b / "train").is_file()
        ),
        aliases=["cifar-100"],
    ),
]

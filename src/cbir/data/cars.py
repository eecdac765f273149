"""Cars196 (Stanford Cars), in the ``cars_annos.mat`` + ``car_ims/`` layout.

Krause et al., *3D Object Representations for Fine-Grained Categorization*, 3dRR 2013
(https://ai.stanford.edu/~jkrause/cars/car_dataset.html). ``cars_annos.mat`` holds the struct
array ``annotations`` (fields ``relative_im_path`` such as "car_ims/000001.jpg", ``bbox_*``,
``class`` 1-196, ``test`` 0/1) and the cell array ``class_names``; ``car_ims.tgz`` extracts
to ``car_ims/`` beside it. 16,185 images of 196 classes.

Splits: "train" (8,144) / "test" (8,041), the official split; and the zero-shot
metric-learning split (Oh Song et al., CVPR 2016) "zs-train" = classes 1-98 (8,054 images)
and "zs-test" = classes 99-196 (8,131). Labels are 0-based class ids in every split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cbir.data.base import Dataset, ImageSet, file_loader
from cbir.data.registry import Layout
from cbir.errors import CbirError

NAME = "cars196"


def _read_mat(path: Path) -> dict:
    import scipy.io

    if not path.is_file():
        raise CbirError(f"{path}: missing (download cars_annos.mat from the Stanford Cars page)")
    try:
        return scipy.io.loadmat(str(path), squeeze_me=True)
    except Exception as e:  # scipy raises many types on bad input
        raise CbirError(f"{path}: cannot read as a MATLAB file ({type(e).__name__}: {e})") from None


def _split(name: str, paths: np.ndarray, labels: np.ndarray, mask: np.ndarray, classes: list[str]):
    sel = [str(p) for p in paths[mask]]
    return ImageSet(f"{NAME}/{name}", labels[mask], file_loader(sel), sel, sel, classes)


def load_cars(root: Path) -> Dataset:
    """Read Cars196 under ``root`` (lazily: images are opened when loaded)."""
    root = Path(root)
    mat_path = root / "cars_annos.mat"
    mat = _read_mat(mat_path)
    ann = np.atleast_1d(mat.get("annotations", np.zeros(0)))
    fields = ann.dtype.names or ()
    for f in ("relative_im_path", "class", "test"):
        if f not in fields:
            raise CbirError(f"{mat_path}: 'annotations' has no field {f!r}; not cars_annos.mat")
    if not (root / "car_ims").is_dir():
        raise CbirError(f"{root / 'car_ims'}: missing image folder (extract car_ims.tgz here)")
    rel = [str(p) for p in ann["relative_im_path"]]
    paths = np.asarray([str(root / p) for p in rel], dtype=object)
    labels = ann["class"].astype(np.int64) - 1
    test = ann["test"].astype(np.int64) != 0
    names = [str(c) for c in np.atleast_1d(mat.get("class_names", []))]
    n_classes = max(len(names), int(labels.max()) + 1 if len(labels) else 0)
    classes = names + [str(c + 1) for c in range(len(names), n_classes)]
    zs = labels < n_classes // 2
    splits = {
        "train": _split("train", paths, labels, ~test, classes),
        "test": _split("test", paths, labels, test, classes),
        "zs-train": _split("zs-train", paths, labels, zs, classes),
        "zs-test": _split("zs-test", paths, labels, ~zs, classes),
    }
    return Dataset(NAME, splits, classes, str(root))


LAYOUT = Layout(
    name=NAME,
    description="Cars196 / Stanford Cars, cars_annos.mat + car_ims/ (Krause 2013, 16,185 images, "
    "196 classes); splits train (8,144), test (8,041), zs-train (classes 1-98, 8,054), "
    "zs-test (99-196, 8,131)",
    load=load_cars,
    default_roots=[f"~/.cache/cbir/data/{NAME}"],
    detect=lambda root: (root / "cars_annos.mat").is_file(),
    aliases=["cars", "stanford-cars"],
)

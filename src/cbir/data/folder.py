"""Folders of images: recursive discovery by content, and the ImageFolder layout.

ImageFolder (torchvision's layout): ``root/<class>/<image>``; or, with standard splits,
``root/train/<class>/<image>`` and ``root/test/<class>/<image>``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cbir.data.base import Dataset, ImageSet, file_loader
from cbir.data.images import IMAGE_SUFFIXES, sniff_file
from cbir.data.registry import Layout
from cbir.errors import CbirError


def is_image_candidate(path: Path) -> bool:
    """True if the name claims an image or the first bytes are an image's."""
    return path.suffix.lower() in IMAGE_SUFFIXES or sniff_file(path) is not None


def find_images(root: str | os.PathLike[str]) -> list[Path]:
    """All image files under ``root``, recursively, sorted; found by suffix or by content.

    Hidden files and folders are skipped; symlinked folders are not followed (no loops).
    A file whose name claims an image but whose content is not one is still returned,
    so that indexing reports it as a failure with its reason; so is anything else named
    like an image that is not a folder (a dangling symlink, a symlink loop, a FIFO).
    """
    root = Path(root)
    if not root.exists():
        raise CbirError(f"{root}: no such file or directory")
    if root.is_file():
        return [root]
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith("."):
                continue
            p = Path(dirpath) / name
            if p.is_file():
                if is_image_candidate(p):
                    out.append(p)
            elif p.suffix.lower() in IMAGE_SUFFIXES:
                out.append(p)  # a dangling link, a link loop, a FIFO: reported when read
    out.sort()
    return out


def _class_dirs(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def _read_split(root: Path, name: str, classes: list[str] | None = None) -> ImageSet:
    dirs = _class_dirs(root)
    class_names = classes if classes is not None else [d.name for d in dirs]
    index = {c: i for i, c in enumerate(class_names)}
    paths: list[str] = []
    labels: list[int] = []
    for d in dirs:
        if d.name not in index:
            raise CbirError(f"{d}: class {d.name!r} is not among the training classes")
        for p in find_images(d):
            paths.append(str(p))
            labels.append(index[d.name])
    if not paths:
        raise CbirError(f"{root}: no images found in class sub-folders")
    return ImageSet(
        name=name,
        labels=np.asarray(labels, dtype=np.int64),
        loader=file_loader(paths),
        keys=paths,
        paths=paths,
        class_names=class_names,
    )


def load_imagefolder(root: Path) -> Dataset:
    """Read an ImageFolder; splits "all", plus "train"/"test" where those folders exist."""
    root = Path(root)
    if not root.is_dir():
        raise CbirError(f"{root}: not a directory")
    if (root / "train").is_dir() and (root / "test").is_dir():
        train = _read_split(root / "train", f"{root.name}/train")
        test = _read_split(root / "test", f"{root.name}/test", list(train.class_names or []))
        return Dataset(
            root.name, {"train": train, "test": test}, train.class_names or [], str(root)
        )
    if not _class_dirs(root):
        raise CbirError(f"{root}: not an ImageFolder (expected one sub-folder of images per class)")
    split = _read_split(root, f"{root.name}/all")
    return Dataset(root.name, {"all": split}, split.class_names or [], str(root))


def detect_imagefolder(root: Path) -> bool:
    """True if ``root`` has class sub-folders that contain images."""
    try:
        for d in _class_dirs(root)[:50]:
            if any(is_image_candidate(p) for p in list(d.iterdir())[:20] if p.is_file()):
                return True
            for s in _class_dirs(d)[:5]:  # train/<class>/...
                if any(is_image_candidate(p) for p in list(s.iterdir())[:20] if p.is_file()):
                    return True
    except OSError:
        return False
    return False


LAYOUT = Layout(
    name="imagefolder",
    description="root/<class>/<image> (or root/train|test/<class>/<image>); splits all, or train/test",
    load=load_imagefolder,
    detect=detect_imagefolder,
)

"""The dataset interface every reader returns: splits of images with labels.

A reader (one file per layout, e.g. ``idx.py`` for MNIST / Fashion-MNIST) returns a
:class:`Dataset` whose ``splits`` map standard split names from the papers ("train",
"test", "query", "database", ...) to :class:`ImageSet` objects.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image


@dataclass
class ImageSet:
    """One split: ``n`` images addressed by position, with labels.

    Args:
        name: "dataset/split", used in cache keys and reports.
        labels: ``(n,)`` int64 class ids, or ``(n, C)`` uint8 multi-hot for multi-label
            sets (NUS-WIDE); :attr:`multilabel` tells which.
        loader: ``loader(i) -> PIL.Image`` (RGB) for image ``i``.
        keys: a stable identity per item (a file path, or "name:i" for array datasets),
            used to key the feature cache.
        paths: the file of each item where items are files, else None.
        class_names: names of the label ids, where known.
        parent: for a :meth:`subset`, the set it was taken from and the positions taken
            (the feature cache slices a cached parent instead of embedding again).
    """

    name: str
    labels: np.ndarray
    loader: Callable[[int], Image.Image]
    keys: Sequence[str]
    paths: Sequence[str] | None = None
    class_names: Sequence[str] | None = None
    parent: tuple[ImageSet, np.ndarray] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels)
        if len(self.keys) != len(self.labels):
            raise ValueError(f"{self.name}: {len(self.keys)} keys but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def multilabel(self) -> bool:
        """True when labels are multi-hot rows."""
        return self.labels.ndim == 2

    def load(self, i: int) -> Image.Image:
        """Return image ``i`` as an RGB PIL image."""
        img = self.loader(int(i))
        return img if img.mode == "RGB" else img.convert("RGB")

    def subset(self, indices: Sequence[int] | np.ndarray, name: str | None = None) -> ImageSet:
        """Return the images at ``indices`` as a new ImageSet (loads stay lazy)."""
        idx = np.asarray(indices, dtype=np.int64)
        base = self.loader
        return ImageSet(
            name=name or self.name,
            labels=self.labels[idx],
            loader=lambda i: base(int(idx[i])),
            keys=[self.keys[i] for i in idx],
            paths=None if self.paths is None else [self.paths[i] for i in idx],
            class_names=self.class_names,
            parent=(self, idx),
        )

    def root(self) -> tuple[ImageSet, np.ndarray]:
        """The set this one was (repeatedly) subset from, and this set's positions in it."""
        s, idx = self, np.arange(len(self), dtype=np.int64)
        while s.parent is not None:
            s, pidx = s.parent
            idx = pidx[idx]
        return s, idx


@dataclass
class Dataset:
    """A dataset: named splits plus class names and where it was read from."""

    name: str
    splits: dict[str, ImageSet]
    class_names: Sequence[str] = field(default_factory=list)
    root: str = ""

    def __getitem__(self, split: str) -> ImageSet:
        if split not in self.splits:
            from cbir.errors import CbirError

            raise CbirError(
                f"dataset {self.name!r} has no split {split!r}; it has: {', '.join(self.splits)}"
            )
        return self.splits[split]


def array_loader(images: np.ndarray) -> Callable[[int], Image.Image]:
    """Loader over an in-memory uint8 array ``(n, h, w)`` or ``(n, h, w, 3)``."""

    def load(i: int) -> Image.Image:
        a = images[i]
        img = Image.fromarray(a)
        return img.convert("RGB")

    return load


def file_loader(paths: Sequence[str]) -> Callable[[int], Image.Image]:
    """Loader over image files, decoded safely (see :mod:`cbir.data.images`)."""
    from cbir.data.images import open_image

    def load(i: int) -> Image.Image:
        return open_image(paths[i])

    return load

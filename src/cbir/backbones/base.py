"""What cbir needs of a backbone (the network that turns images into feature rows).

A backbone is anything with the attributes of :class:`Backbone`. :class:`ImageBackbone`
gives ``size`` and ``embed`` on top of ``run``, so a new backbone writes ``__init__``,
``fingerprint`` and ``run`` (see ``docs/backbones.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from cbir.backbones.preprocess import Preprocess


@runtime_checkable
class Backbone(Protocol):
    """An image-embedding model.

    Attributes:
        name: its registry name (``cbir.backbones.registry``).
        dim: length of a feature row.
        preprocess: how a decoded image becomes the ``(size, size, 3)`` uint8 array
            ``run`` takes (resizing runs in the decoding threads).
        fingerprint: a JSON-able dict the index records; an index refuses a backbone
            whose fingerprint differs. It holds ``"backbone"`` (the registry name),
            ``"dim"`` and ``"preprocess"`` (with ``"size"``), plus whatever identifies the
            weights.

    Optional (absent, or None, when the model has none):
        classify(images, k): top-k ImageNet ``[class, probability]`` pairs per image.
        embed_text(texts): features of texts in the image feature space (joint models).
    """

    name: str
    dim: int
    preprocess: Preprocess

    @property
    def fingerprint(self) -> dict[str, Any]: ...

    @property
    def size(self) -> int: ...

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(features (n, dim) float32, logits (n, n_classes))`` of a preprocessed uint8
        batch ``(n, size, size, 3)``; logits are ``(n, 0)`` for a model without a classifier."""
        ...

    def embed(self, images: Any) -> np.ndarray:
        """Features ``(n, dim)`` float32 of decoded images or a preprocessed batch."""
        ...


class ImageBackbone:
    """Shared behaviour of image backbones: subclasses set ``name``, ``dim``,
    ``preprocess`` and define ``fingerprint`` and ``run``."""

    name: str = ""
    dim: int = 0
    #: Width of ``run``'s logits (0: no classifier).
    n_classes: int = 0
    preprocess: Preprocess
    embed_text = None

    @property
    def size(self) -> int:
        """Input side in pixels."""
        return self.preprocess.size

    @property
    def fingerprint(self) -> dict[str, Any]:
        raise NotImplementedError

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def batch(self, images: Any) -> np.ndarray:
        """A preprocessed uint8 batch ``(n, size, size, 3)`` of ``images``: PIL images or
        HWC arrays (resized here), or an already preprocessed batch (returned as is)."""
        s = self.preprocess.size
        if isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[1:] == (s, s, 3):
            return np.ascontiguousarray(images, np.uint8)
        if isinstance(images, Image.Image | np.ndarray):
            images = [images]
        out = [
            self.preprocess(im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im)))
            for im in images
        ]
        return np.stack(out) if out else np.zeros((0, s, s, 3), np.uint8)

    def embed(self, images: Any) -> np.ndarray:
        """Features ``(n, dim)`` float32 of ``images`` (see :meth:`batch`)."""
        b = self.batch(images)
        if not len(b):
            return np.zeros((0, self.dim), np.float32)
        return np.asarray(self.run(b)[0], np.float32)


def no_logits(n: int) -> np.ndarray:
    """The ``(n, 0)`` logits of a backbone without a classifier."""
    return np.zeros((n, 0), np.float32)


def top_classes(logits: np.ndarray, k: int = 5) -> list[list[list[float]]]:
    """Top-k ImageNet (class id, probability) pairs per row of logits."""
    z = logits - logits.max(1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(1, keepdims=True)
    k = min(k, p.shape[1])
    if 0 < k < p.shape[1]:  # the k largest, then sorted: not a sort of all 1000 classes
        part = np.argpartition(-p, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(part, np.argsort(-np.take_along_axis(p, part, 1), 1), 1)
    else:
        top = np.argsort(-p, axis=1)[:, :k]
    return [[[int(c), round(float(p[i, c]), 4)] for c in top[i]] for i in range(len(p))]


def classify(backbone: Any, images: Sequence[Any] | np.ndarray, k: int = 5) -> list:
    """Top-k ImageNet classes of ``images`` by ``backbone`` (empty lists without a classifier)."""
    b = backbone.batch(images)
    logits = backbone.run(b)[1] if len(b) else no_logits(0)
    return top_classes(logits, k) if logits.size else [[] for _ in range(len(b))]

"""Transforms: what turns backbone features into the vectors or codes an index holds.

The store keeps backbone features; a transform is applied on top, so a new learned head
re-derives the index without decoding a single image again.

- :class:`FrozenTransform`: the frozen backbone: optional centring by the collection mean,
  then L2 normalisation, so inner product is cosine similarity.
- :class:`~cbir.heads.learned.LearnedTransform`: a trained head (hashing, metric
  learning, sparse codes, joint image-text); further kinds with :func:`register_transform`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cbir.errors import CbirError
from cbir.heads.base import Transform, l2_normalize
from cbir.heads.frozen import FrozenTransform

__all__ = [
    "FrozenTransform",
    "Transform",
    "l2_normalize",
    "load_transform",
    "register_transform",
    "spec_digest",
]


def _frozen(spec: dict[str, Any], root: Path | None) -> FrozenTransform:
    return FrozenTransform(
        dim=spec.get("dim", 1280),
        center=spec.get("center", False),
        mean=spec.get("mean"),
        fitted=spec.get("fitted"),
        whiten=spec.get("whiten", False),
        whitening=spec.get("whitening"),
        root=root,
    )


def _learned(spec: dict[str, Any], root: Path | None) -> Transform:
    # imported here so that searching with the frozen backbone does not import torch
    try:
        from cbir.heads.learned import load_learned
    except ModuleNotFoundError as e:
        if e.name is not None and e.name.split(".")[0] == "torch":
            raise CbirError(
                "this index applies a learned head (cbir train), which needs torch:"
                " pip install 'cbir[train]'"
            ) from None
        raise

    return load_learned(spec, root)


_REGISTRY: dict[str, Callable[[dict[str, Any], Path | None], Transform]] = {
    "frozen": _frozen,
    "learned": _learned,
}


def register_transform(
    kind: str, factory: Callable[[dict[str, Any], Path | None], Transform]
) -> None:
    """Register a transform kind for :func:`load_transform`."""
    _REGISTRY[kind] = factory


def load_transform(spec: dict[str, Any], root: Path | None = None) -> Transform:
    """Rebuild a transform from its :meth:`Transform.spec` (``root``: the index dir)."""
    kind = spec.get("kind", "frozen")
    if kind not in _REGISTRY:
        raise CbirError(f"unknown transform kind {kind!r} in the index; upgrade cbir")
    return _REGISTRY[kind](spec, root)


def spec_digest(spec: dict[str, Any]) -> str:
    """A short stable hash of a transform spec."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

"""Transforms: what turns backbone features into the vectors or codes an index holds.

The store keeps backbone features; a transform is applied on top, so a new learned head
re-derives the index without decoding a single image again.

- :class:`FrozenTransform`: the frozen backbone: optional centring by the collection mean,
  then L2 normalisation, so inner product is cosine similarity.
- Learned heads (hashing, metric learning) register further kinds with
  :func:`register_transform`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cbir.errors import CbirError


class Transform(Protocol):
    """Maps ``(n, feature_dim)`` float32 features to index vectors."""

    #: "float" (float32 rows, inner-product search) or "binary" (packed uint8 codes).
    kind: str
    #: Output dimension (bits for binary codes).
    dim: int

    def __call__(self, features: np.ndarray) -> np.ndarray: ...

    def float_view(self, features: np.ndarray) -> np.ndarray:
        """Float vectors used for re-ranking (cosine on these)."""
        ...

    def spec(self) -> dict[str, Any]:
        """A JSON-serialisable description, enough to rebuild the transform."""
        ...

    def fit(self, features: np.ndarray) -> None:
        """Fit collection statistics (e.g. the mean), if any."""
        ...


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


class FrozenTransform:
    """Backbone features -> (optionally centred) unit vectors for cosine search.

    Args:
        center: subtract the collection mean before normalising (fit on the collection).
        mean: the mean itself, when already fitted.
    """

    kind = "float"

    def __init__(
        self, dim: int = 1280, center: bool = False, mean: list[float] | None = None
    ) -> None:
        self.dim = dim
        self.center = center
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float32)

    def fit(self, features: np.ndarray) -> None:
        if self.center and self.mean is None and len(features):
            self.mean = np.asarray(features, dtype=np.float64).mean(0).astype(np.float32)

    def __call__(self, features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, dtype=np.float32)
        if self.center:
            if self.mean is None:
                raise CbirError("centred transform used before fit(); rebuild the index")
            x = x - self.mean
        return l2_normalize(x)

    def float_view(self, features: np.ndarray) -> np.ndarray:
        return self(features)

    def spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": "frozen", "dim": self.dim, "center": self.center}
        if self.mean is not None:
            out["mean"] = [float(v) for v in self.mean]
        return out


_REGISTRY: dict[str, Callable[[dict[str, Any], Path | None], Transform]] = {
    "frozen": lambda spec, root: FrozenTransform(
        dim=spec.get("dim", 1280), center=spec.get("center", False), mean=spec.get("mean")
    ),
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
        # learned heads register themselves on import
        import importlib

        try:
            importlib.import_module("cbir.heads.learned")
        except ModuleNotFoundError:
            pass
    if kind not in _REGISTRY:
        raise CbirError(f"unknown transform kind {kind!r} in the index; upgrade cbir")
    return _REGISTRY[kind](spec, root)


def spec_digest(spec: dict[str, Any]) -> str:
    """A short stable hash of a transform spec."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

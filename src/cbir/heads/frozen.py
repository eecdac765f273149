"""The frozen backbone as a transform: (optionally centred) unit vectors for cosine search."""

from __future__ import annotations

from typing import Any

import numpy as np

from cbir.errors import CbirError
from cbir.heads.base import l2_normalize


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

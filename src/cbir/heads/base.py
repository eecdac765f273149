"""What every transform is: backbone features in, index vectors or codes out."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from cbir.codes.base import l2_normalize

__all__ = ["Transform", "l2_normalize"]


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

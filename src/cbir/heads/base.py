"""What every transform is: backbone features in, index vectors or codes out."""

from __future__ import annotations

import time
from typing import Any, Protocol

import numpy as np

from cbir.codes.base import l2_normalize

__all__ = ["Transform", "collection_mean", "l2_normalize"]


def collection_mean(features: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """The mean of a collection's features (float32, summed in float64) and the record of
    the fit kept in an index's spec: ``{"images": n, "at": "YYYY-mm-ddTHH:MM:SSZ"}``."""
    mean = np.asarray(features, dtype=np.float64).mean(0).astype(np.float32)
    fitted = {
        "images": int(len(features)),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return mean, fitted


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

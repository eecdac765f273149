"""The frozen backbone as a transform: (optionally centred) unit vectors for cosine search.

Centring (subtracting the collection mean before L2 normalisation) is the default of new
indexes: it removes the direction every feature shares, so cosine compares what differs
(fashion-mnist mAP 0.5741 centred vs 0.5519 not; docs/evaluation.md).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from cbir.errors import CbirError
from cbir.heads.base import l2_normalize


class FrozenTransform:
    """Backbone features -> (optionally centred) unit vectors for cosine search.

    Args:
        center: subtract the collection mean before normalising (fit on the collection).
        mean: the mean itself, when already fitted.
        fitted: when and on how many images the mean was fitted
            (``{"images": n, "at": "YYYY-mm-ddTHH:MM:SSZ"}``), recorded in the spec.
    """

    kind = "float"

    def __init__(
        self,
        dim: int = 1280,
        center: bool = False,
        mean: list[float] | None = None,
        fitted: dict[str, Any] | None = None,
    ) -> None:
        self.dim = dim
        self.center = center
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float32)
        self.fitted = None if mean is None else fitted

    def fit(self, features: np.ndarray) -> None:
        """Fit the mean on ``features`` (only when centring and not fitted yet)."""
        if self.center and self.mean is None and len(features):
            self.mean = np.asarray(features, dtype=np.float64).mean(0).astype(np.float32)
            self.fitted = {
                "images": int(len(features)),
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }

    def unfit(self) -> None:
        """Forget the mean, so the next :meth:`fit` computes it again (a refit)."""
        self.mean, self.fitted = None, None

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
            if self.fitted:
                out["fitted"] = dict(self.fitted)
        return out

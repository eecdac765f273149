"""The frozen backbone as a transform: (optionally centred) unit vectors for cosine search.

Centring (subtracting the collection mean before L2 normalisation) is the default of new
indexes: it removes the direction every feature shares, so cosine compares what differs
(fashion-mnist mAP 0.5741 centred vs 0.5519 not; docs/evaluation.md).

``whiten`` adds PCA-whitening learned on the collection (the R-MAC pooling's, Tolias et al.
ICLR 2016; :func:`cbir.backbones.pooling.learn_whitening`): fitted with the mean, kept in the
index directory as ``whiten-<digest>.npy`` (its mean row, then the matrix).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cbir.errors import CbirError
from cbir.heads.base import collection_mean, l2_normalize, read_fitted_array, write_fitted_array


class FrozenTransform:
    """Backbone features -> (optionally centred) unit vectors for cosine search.

    Args:
        center: subtract the collection mean before normalising (fit on the collection).
        mean: the mean itself, when already fitted.
        fitted: when and on how many images the mean was fitted
            (``{"images": n, "at": "YYYY-mm-ddTHH:MM:SSZ"}``), recorded in the spec.
        whiten: also PCA-whiten (fit on the collection) before normalising.
        whitening: the fitted whitening's file name in the index directory ``root``.
    """

    kind = "float"

    def __init__(
        self,
        dim: int = 1280,
        center: bool = False,
        mean: list[float] | None = None,
        fitted: dict[str, Any] | None = None,
        whiten: bool = False,
        whitening: dict[str, Any] | None = None,
        root: Path | None = None,
    ) -> None:
        self.dim = dim
        self.center = center
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float32)
        self.fitted = None if mean is None else fitted
        self.whiten = whiten
        self.root = None if root is None else Path(root)
        self.whitening = whitening
        self.white: np.ndarray | None = None  # (dim + 1, dim): the mean row, then P
        if whiten and whitening is not None:
            self.white = self._read_whitening(whitening)

    def _read_whitening(self, whitening: dict[str, Any]) -> np.ndarray:
        return read_fitted_array(self.root, whitening, "whitening")

    def _write_whitening(self) -> None:
        if self.white is None or self.root is None or self.whitening is not None:
            return
        self.whitening = write_fitted_array(self.root, "whiten", self.white)

    def install(self, root: Path) -> None:
        """Record the index directory (where a fitted whitening is written)."""
        self.root = Path(root)
        self._write_whitening()

    def fit(self, features: np.ndarray) -> None:
        """Fit the mean on ``features`` (only when centring and not fitted yet), and the
        whitening (when whitening and not fitted yet)."""
        if self.center and self.mean is None and len(features):
            self.mean, self.fitted = collection_mean(features)
        if self.whiten and self.white is None and len(features):
            from cbir.backbones.pooling import learn_whitening

            x = np.asarray(features, dtype=np.float32)
            mean, p = learn_whitening(x - self.mean if self.center else x)
            self.white = np.concatenate([mean[None], p]).astype(np.float32)
            self.whitening = None
            self._write_whitening()

    def unfit(self) -> None:
        """Forget the mean (and whitening), so the next :meth:`fit` computes it again."""
        self.mean, self.fitted = None, None
        self.white, self.whitening = None, None

    def __call__(self, features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, dtype=np.float32)
        if self.center:
            if self.mean is None:
                raise CbirError("centred transform used before fit(); rebuild the index")
            x = x - self.mean
        if self.whiten:
            if self.white is None:
                raise CbirError("whitening transform used before fit(); rebuild the index")
            x = (x - self.white[0]) @ self.white[1:]
        return l2_normalize(x)

    def float_view(self, features: np.ndarray) -> np.ndarray:
        return self(features)

    def spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": "frozen", "dim": self.dim, "center": self.center}
        if self.mean is not None:
            out["mean"] = [float(v) for v in self.mean]
            if self.fitted:
                out["fitted"] = dict(self.fitted)
        if self.whiten:
            out["whiten"] = True
            if self.whitening is not None:
                out["whitening"] = dict(self.whitening)
        return out

"""Random-hyperplane LSH: Charikar, "Similarity Estimation Techniques from Rounding
Algorithms", STOC 2002 (SimHash)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


class LSH:
    """``b = sign(W^T (x - mean))`` with ``W`` i.i.d. standard normal, shape ``(dim, bits)``.

    For two vectors at angle ``theta``, each bit differs with probability ``theta / pi``,
    so ``Hamming / bits`` estimates ``theta / pi``.

    Args:
        bits: code length.
        center: subtract the training mean before projecting (hyperplanes through the data
            mean instead of the origin); False gives the plain angle-preserving hash.
        seed: seed of ``W`` (``np.random.default_rng``).
    """

    def __init__(self, bits: int, center: bool = False, seed: int = 0):
        self.bits = int(bits)
        self.center = bool(center)
        self.seed = int(seed)
        self.mean: np.ndarray | None = None
        self.planes: np.ndarray | None = None

    def fit(self, X: np.ndarray) -> LSH:
        """Draw the hyperplanes for ``X.shape[1]`` dims (and the mean, if centering)."""
        X = np.asarray(X, dtype=np.float64)
        self.mean = X.mean(0) if self.center else np.zeros(X.shape[1])
        self.planes = np.random.default_rng(self.seed).standard_normal((X.shape[1], self.bits))
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        """``(n, bits)`` int8 codes in {-1, +1} (0 -> +1)."""
        if self.planes is None or self.mean is None:
            raise RuntimeError("LSH.transform before fit")
        proj = (np.asarray(X, dtype=np.float64) - self.mean) @ self.planes
        return np.where(proj >= 0, 1, -1).astype(np.int8)

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        return self.fit(X).transform(X)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Arrays to save with ``np.savez``; restore with :meth:`from_state`."""
        if self.planes is None or self.mean is None:
            raise RuntimeError("LSH.state_dict before fit")
        return {
            "bits": np.array(self.bits),
            "center": np.array(self.center),
            "seed": np.array(self.seed),
            "mean": self.mean,
            "planes": self.planes,
        }

    @classmethod
    def from_state(cls, d: Mapping[str, Any]) -> LSH:
        m = cls(int(d["bits"]), bool(d["center"]), int(d["seed"]))
        m.mean = np.asarray(d["mean"], dtype=np.float64)
        m.planes = np.asarray(d["planes"], dtype=np.float64)
        return m

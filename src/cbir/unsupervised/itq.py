"""ITQ: Gong, Lazebnik, "Iterative Quantization: A Procrustean Approach to Learning Binary
Codes", CVPR 2011 (and Gong, Lazebnik, Gordo, Perronnin, TPAMI 2013)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def _sign(x: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, 1.0, -1.0)


class ITQ:
    """PCA to ``bits`` dimensions, then a rotation ``R`` minimising ``||B - V R||_F^2``.

    Alternates (``n_iter`` times, from a random orthogonal ``R``): ``B = sign(V R)``, then
    the orthogonal Procrustes solution ``R = U W^T`` for ``V^T B = U S W^T``.
    Codes: ``sign((x - mean) P R)``.

    Args:
        bits: code length (at most the feature dimension).
        n_iter: alternating iterations (50, as in the paper).
        seed: seed of the initial rotation.
    """

    def __init__(self, bits: int, n_iter: int = 50, seed: int = 0):
        self.bits = int(bits)
        self.n_iter = int(n_iter)
        self.seed = int(seed)
        self.mean: np.ndarray | None = None
        self.components: np.ndarray | None = None
        self.rotation: np.ndarray | None = None
        self.errors_: list[float] = []

    def fit(self, X: np.ndarray) -> ITQ:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or not 0 < self.bits <= min(X.shape):
            raise ValueError(f"ITQ needs (n, dim) data with bits <= min(n, dim); got {X.shape}")
        self.mean = X.mean(0)
        Xc = X - self.mean
        evals, evecs = np.linalg.eigh(Xc.T @ Xc / len(X))
        P = evecs[:, np.argsort(evals)[::-1][: self.bits]]
        P *= np.where(P[np.abs(P).argmax(0), np.arange(self.bits)] < 0, -1.0, 1.0)
        self.components = P
        V = Xc @ P
        R = np.linalg.svd(np.random.default_rng(self.seed).standard_normal((self.bits,) * 2))[0]
        self.errors_ = []
        for _ in range(self.n_iter):
            B = _sign(V @ R)
            U, _, Wt = np.linalg.svd(V.T @ B)
            R = U @ Wt
            self.errors_.append(float(((_sign(V @ R) - V @ R) ** 2).sum() / len(X)))
        self.rotation = R
        return self

    def _project(self, X: np.ndarray) -> np.ndarray:
        if self.components is None or self.mean is None:
            raise RuntimeError("ITQ used before fit")
        return (np.asarray(X, dtype=np.float64) - self.mean) @ self.components

    def transform(self, X: np.ndarray) -> np.ndarray:
        """``(n, bits)`` int8 codes in {-1, +1} (0 -> +1)."""
        assert self.rotation is not None
        return _sign(self._project(X) @ self.rotation).astype(np.int8)

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        return self.fit(X).transform(X)

    def quantization_error(self, X: np.ndarray, rotation: np.ndarray | None = None) -> float:
        """``||sign(V R) - V R||_F^2 / n`` with ``V`` the PCA projection (``R``: fitted by default;
        pass ``np.eye(bits)`` for plain PCA-then-sign)."""
        R = self.rotation if rotation is None else rotation
        assert R is not None
        VR = self._project(X) @ R
        return float(((_sign(VR) - VR) ** 2).sum() / len(VR))

    def state_dict(self) -> dict[str, np.ndarray]:
        """Arrays to save with ``np.savez``; restore with :meth:`from_state`."""
        if self.rotation is None or self.components is None or self.mean is None:
            raise RuntimeError("ITQ.state_dict before fit")
        return {
            "bits": np.array(self.bits),
            "n_iter": np.array(self.n_iter),
            "seed": np.array(self.seed),
            "mean": self.mean,
            "components": self.components,
            "rotation": self.rotation,
        }

    @classmethod
    def from_state(cls, d: Mapping[str, Any]) -> ITQ:
        m = cls(int(d["bits"]), int(d["n_iter"]), int(d["seed"]))
        m.mean = np.asarray(d["mean"], dtype=np.float64)
        m.components = np.asarray(d["components"], dtype=np.float64)
        m.rotation = np.asarray(d["rotation"], dtype=np.float64)
        return m

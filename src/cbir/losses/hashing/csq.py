"""CSQ: Yuan, Wang, Zhang, Tay, Jie, Liu, Feng, "Central Similarity Quantization for
Efficient Image and Video Retrieval", CVPR 2020."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.linalg import hadamard
from torch import Tensor

from cbir.losses.hashing.base import HashingLoss


def center_distances(centers: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances of +-1 rows: ``(bits - c_i . c_j) / 2``."""
    c = centers.astype(np.int64)
    return (c.shape[1] - c @ c.T) // 2


def hash_centers(n_classes: int, bits: int, seed: int = 0, n_tries: int = 20) -> np.ndarray:
    """``(n_classes, bits)`` int8 +-1 hash centers (Sec. 3.2, Algorithm 1).

    Rows of a Hadamard matrix H (mutual distance bits/2) when ``n_classes <= bits``, then
    rows of -H (distance bits/2 to the other rows of H, bits to their own opposite) up to
    ``2 * bits``. Further classes, or every class when ``bits`` is not a power of two
    (no Hadamard matrix), get Bernoulli(1/2) centers: drawn up to ``n_tries`` times with
    ``np.random.default_rng(seed)``, keeping the first draw whose minimum distance exceeds
    bits/4 with mean distance at least bits/2, else the draw with the largest minimum.
    """
    if bits & (bits - 1) == 0:
        h = hadamard(bits).astype(np.int8)
        fixed = np.concatenate([h, -h])[:n_classes]
    else:
        fixed = np.zeros((0, bits), dtype=np.int8)
    n_random = n_classes - len(fixed)
    if n_random == 0:
        return fixed
    rng = np.random.default_rng(seed)
    best, best_min = None, -1
    for _ in range(n_tries):
        draw = np.where(rng.random((n_random, bits)) < 0.5, 1, -1).astype(np.int8)
        centers = np.concatenate([fixed, draw])
        dist = center_distances(centers)[np.triu_indices(n_classes, k=1)]
        low = int(dist.min()) if len(dist) else bits
        if low > bits / 4 and (len(dist) == 0 or dist.mean() >= bits / 2):
            return centers
        if low > best_min:
            best, best_min = centers, low
    assert best is not None
    return best


class CSQ(HashingLoss):
    """Binary cross-entropy of each output to its class's hash center, plus quantization.

    With ``h = tanh(u)`` and ``c`` the +-1 center of the sample's class (Eq. 6)::

        loss = mean_{entries} BCE((h + 1) / 2, (c + 1) / 2) + lambda * mean_{entries} (|h| - 1)^2

    ``(tanh(u) + 1) / 2 = sigmoid(2u)``, so the BCE is evaluated from the logits ``2u``
    (no log of 0). Multi-hot labels: ``c = sign(sum of the centers of the labels)``
    (= sign of their mean); ties (0) take the bit of a fixed random center, as in the
    official code. Centers are the ``centers`` buffer, deterministic for ``seed``.

    Args:
        bits: code length.
        n_classes: number of classes (one center each).
        lambda_: weight of the quantization loss (1e-4, official setting).
        seed: seed of the random centers (those beyond the Hadamard ones) and tie center.
    """

    centers: Tensor
    tie_center: Tensor

    def __init__(
        self, bits: int, n_classes: int | None = None, *, lambda_: float = 1e-4, seed: int = 0
    ):
        if n_classes is None:
            raise ValueError("CSQ needs n_classes (one hash center per class)")
        super().__init__(bits, n_classes)
        self.lambda_ = float(lambda_)
        self.seed = int(seed)
        centers = torch.from_numpy(hash_centers(n_classes, bits, seed).astype(np.float32))
        tie = np.random.default_rng([seed, 1]).random(bits) < 0.5
        self.register_buffer("centers", centers)
        self.register_buffer(
            "tie_center", torch.from_numpy(np.where(tie, 1.0, -1.0).astype(np.float32))
        )

    def target_centers(self, labels: Tensor) -> Tensor:
        """``(batch, bits)`` +-1 centers of the labels (int ids or multi-hot)."""
        if labels.dim() == 1:
            return self.centers[labels]
        total = labels.to(self.centers.dtype) @ self.centers
        total = torch.where(total == 0, self.tie_center.expand_as(total), total)
        return torch.sign(total)

    def compute_loss(self, u: Tensor, labels: Tensor, index: Tensor | None) -> Tensor:
        c = self.target_centers(labels).to(u.dtype)
        center = F.binary_cross_entropy_with_logits(2 * u, (c + 1) / 2)
        quant = (torch.tanh(u).abs() - 1).pow(2).mean()
        return center + self.lambda_ * quant

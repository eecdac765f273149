"""DCH: Cao, Long, Liu, Wang, "Deep Cauchy Hashing for Hamming Space Retrieval", CVPR 2018."""

from __future__ import annotations

import torch
from torch import Tensor

from cbir.losses.hashing.base import HashingLoss, balanced_pair_weights, masked_mean


def normalized_hamming(a: Tensor, b: Tensor, bits: int, max_cos: float = 0.99) -> Tensor:
    """``d_ij = bits / 2 * (1 - cos(a_i, b_j))`` (Eq. 5); cos clipped at ``max_cos``."""
    cos = (a @ b.t()) / (a.norm(dim=1)[:, None] * b.norm(dim=1)[None, :]).clamp(min=1e-4)
    return bits / 2 * (1 - cos.clamp(max=max_cos))


class DCH(HashingLoss):
    """Cauchy cross-entropy on the normalized Hamming distance plus Cauchy quantization.

    With ``p(s_ij = 1) = gamma / (gamma + d_ij)`` (Eq. 6-9)::

        l_ij = s_ij log(1 + d_ij / gamma) + (1 - s_ij) log(1 + gamma / d_ij)
        loss = mean_{pairs} w_ij l_ij + lambda * mean_i log(1 + d(|u_i|, 1) / gamma)

    (``l_ij`` is the paper's ``s_ij log(d_ij / gamma) + log(1 + gamma / d_ij)`` rewritten
    without cancellation), with the HashNet weights ``w_ij = |S|/|S1|``, ``|S|/|S0|``.
    ``cos`` is clipped at 0.99 so that ``gamma / d`` stays finite for identical codes
    (as in the reference implementations).

    Args:
        bits: code length.
        gamma: scale of the Cauchy distribution: p = 1/2 at a distance of gamma. The
            paper selects it on validation data; 20 is the reference implementations'
            setting.
        lambda_: weight of the quantization loss (0.1).
        n_classes: unused except for checking multi-hot labels.
        n_samples: training-set size for a memory bank of outputs (see ``HashingLoss``).
    """

    def __init__(
        self,
        bits: int,
        n_classes: int | None = None,
        *,
        gamma: float = 20.0,
        lambda_: float = 0.1,
        n_samples: int | None = None,
    ):
        super().__init__(bits, n_classes, n_samples)
        self.gamma = float(gamma)
        self.lambda_ = float(lambda_)

    def compute_loss(self, u: Tensor, labels: Tensor, index: Tensor | None) -> Tensor:
        v, s, valid = self.pairs(u, labels, index)
        d = normalized_hamming(u, v, self.bits)
        cauchy = s * torch.log1p(d / self.gamma) + (1 - s) * torch.log1p(self.gamma / d)
        pair = masked_mean(balanced_pair_weights(s, valid) * cauchy, valid)
        d_q = normalized_hamming(u.abs(), torch.ones_like(u[:1]), self.bits)[:, 0]
        return pair + self.lambda_ * torch.log1p(d_q / self.gamma).mean()

"""DSH: Liu, Wang, Shan, Chen, "Deep Supervised Hashing for Fast Image Retrieval", CVPR 2016."""

from __future__ import annotations

from torch import Tensor

from cbir.losses.hashing.base import HashingLoss, masked_mean


class DSH(HashingLoss):
    """Contrastive loss on the real outputs plus a push of every entry towards +-1 (Eq. 3).

    For a pair with squared distance ``d = ||u_i - u_j||^2``::

        l_ij = s_ij / 2 * d  +  (1 - s_ij) / 2 * max(m - d, 0)
        loss = mean_{pairs} l_ij  +  alpha * mean_{pairs} (r_i + r_j),   r_i = || |u_i| - 1 ||_1

    The regulariser term is computed as ``2 * alpha * mean_i r_i``, which is what the
    per-pair ``alpha (r_i + r_j)`` of the paper averages to over all pairs of the batch.

    Args:
        bits: code length.
        margin: ``m``; default ``2 * bits`` as in the paper.
        alpha: weight of the regulariser (paper: 0.01).
        n_classes: unused except for checking multi-hot labels.
        n_samples: training-set size for a memory bank of outputs (see ``HashingLoss``).
    """

    def __init__(
        self,
        bits: int,
        n_classes: int | None = None,
        *,
        margin: float | None = None,
        alpha: float = 0.01,
        n_samples: int | None = None,
    ):
        super().__init__(bits, n_classes, n_samples)
        self.margin = 2.0 * bits if margin is None else float(margin)
        self.alpha = float(alpha)

    def compute_loss(self, u: Tensor, labels: Tensor, index: Tensor | None) -> Tensor:
        v, s, valid = self.pairs(u, labels, index)
        d = (u[:, None, :] - v[None, :, :]).pow(2).sum(-1)
        pair = 0.5 * s * d + 0.5 * (1 - s) * (self.margin - d).clamp(min=0)
        reg = (u.abs() - 1).abs().sum(1).mean()
        return masked_mean(pair, valid) + 2 * self.alpha * reg

"""Triplet hashing on tanh outputs, after Lai, Pan, Liu, Yan, "Simultaneous Feature Learning
and Hash Coding with Deep Neural Networks", CVPR 2015 (DNNH)."""

from __future__ import annotations

import torch
from torch import Tensor

from cbir.losses.hashing.base import HashingLoss, masked_mean, similarity


class TripletTanh(HashingLoss):
    """Triplet ranking hinge on squared Euclidean distances of ``h = tanh(u)`` (Eq. 1).

    For anchor a, positive p (shares a label, p != a) and negative n (shares none)::

        l_apn = max(0, m + ||h_a - h_p||^2 - ||h_a - h_n||^2)

    ``mining="all"``: mean over every valid triplet of the batch. ``mining="hard"``:
    batch-hard, one triplet per anchor (farthest positive, nearest negative), mean over
    the anchors that have both.

    Margin: DNNH uses margin 1 on sigmoid outputs in [0, 1]. On tanh outputs in [-1, 1]
    the squared distance of saturated codes is ``4 * Hamming``; the default margin
    ``bits / 2`` therefore asks a negative to be ``bits / 8`` Hamming bits farther than
    the positive once codes are binary (the scaling used with tanh outputs in practice).

    Args:
        bits: code length.
        margin: hinge margin on squared distances (default ``bits / 2``).
        mining: "all" or "hard".
        n_classes: unused except for checking multi-hot labels.
    """

    def __init__(
        self,
        bits: int,
        n_classes: int | None = None,
        *,
        margin: float | None = None,
        mining: str = "all",
    ):
        super().__init__(bits, n_classes)
        if mining not in ("all", "hard"):
            raise ValueError(f"mining must be 'all' or 'hard', got {mining!r}")
        self.margin = bits / 2 if margin is None else float(margin)
        self.mining = mining

    def compute_loss(self, u: Tensor, labels: Tensor, index: Tensor | None) -> Tensor:
        h = torch.tanh(u)
        d = (h[:, None, :] - h[None, :, :]).pow(2).sum(-1)
        s = similarity(labels, labels).bool()
        pos = s & ~torch.eye(len(u), dtype=torch.bool, device=u.device)
        neg = ~s
        if self.mining == "all":
            hinge = (self.margin + d[:, :, None] - d[:, None, :]).clamp(min=0)
            return masked_mean(hinge, pos[:, :, None] & neg[:, None, :])
        far_pos = d.masked_fill(~pos, float("-inf")).amax(1)
        near_neg = d.masked_fill(~neg, float("inf")).amin(1)
        has_both = pos.any(1) & neg.any(1)
        hinge = (self.margin + far_pos - near_neg).clamp(min=0)
        return masked_mean(torch.where(has_both, hinge, torch.zeros_like(hinge)), has_both)

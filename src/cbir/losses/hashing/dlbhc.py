"""DLBHC: Lin, Yang, Hsiao, Chen, "Deep Learning of Binary Hash Codes for Fast Image
Retrieval", CVPR Workshops 2015."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cbir.losses.hashing.base import HashingLoss


class DLBHCHead(nn.Module):
    """Latent sigmoid layer H between the features and a softmax classifier (Sec. 3).

    ``forward(x) -> (codes_logit, class_logits)``: ``codes_logit`` the pre-sigmoid latent
    layer (codes: ``sigmoid(codes_logit) > 0.5``, i.e. ``codes_logit > 0``) and
    ``class_logits = classifier(sigmoid(codes_logit))``; train with cross-entropy on them.

    Args:
        in_dim: feature dimension.
        bits: number of latent units (code length).
        n_classes: number of classes.
    """

    def __init__(self, in_dim: int, bits: int, n_classes: int):
        super().__init__()
        self.latent = nn.Linear(in_dim, bits)
        self.classifier = nn.Linear(bits, n_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        codes_logit = self.latent(x)
        return codes_logit, self.classifier(torch.sigmoid(codes_logit))

    @staticmethod
    def codes(codes_logit: Tensor) -> Tensor:
        """Binary codes in {0, 1}: ``sigmoid(codes_logit) > 0.5``."""
        return (codes_logit > 0).to(torch.uint8)


class DLBHC(HashingLoss):
    """DLBHC as a hashing loss: ``u`` is the latent layer before the sigmoid.

    ``loss = cross_entropy(classifier(sigmoid(u)), labels)``; the classifier
    (``nn.Linear(bits, n_classes)``) belongs to the loss, like the class weights of
    pytorch-metric-learning's classification losses: give ``loss.parameters()`` to the
    optimizer too. Multi-hot labels (an extension; the paper is single-label) use
    binary cross-entropy per class.

    Args:
        bits: code length (latent units).
        n_classes: number of classes.
    """

    def __init__(self, bits: int, n_classes: int | None = None):
        if n_classes is None:
            raise ValueError("DLBHC needs n_classes (softmax classifier)")
        super().__init__(bits, n_classes)
        self.classifier = nn.Linear(bits, n_classes)

    def compute_loss(self, u: Tensor, labels: Tensor, index: Tensor | None) -> Tensor:
        logits = self.classifier(torch.sigmoid(u))
        if labels.dim() == 1:
            return F.cross_entropy(logits, labels.long())
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))

"""SUBIC: Jain, Zepeda, Pérez, Gribonval, "SUBIC: A supervised, structured binary code for
image search", ICCV 2017.

The encoder's ``M * K`` outputs go through a block softmax (a softmax on each of the ``M``
blocks of ``K``); the code of an image is each block's argmax (one-hot blocks, ``M log2 K``
bits), searched by :mod:`cbir.codes.subic`. Training (Sec. 3.2, Eq. 7-10) feeds the block
softmax ``z`` to a linear classifier and adds two entropy terms on ``z``::

    loss = CE(classifier(z), y) / log C
           + gamma * mean_i sum_m H(z_i^(m)) / (M log K)      (mean entropy: one-hot blocks)
           - mu    * sum_m H(mean_i z_i^(m)) / (M log K)      (batch entropy: every index used)

normalised as the authors' code does (cross-entropy by ``log C``, entropies by their
maximum ``M log K``), with ``gamma = mu = 1`` its defaults.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cbir.losses.hashing.base import HashingLoss


def block_softmax(u: Tensor, k: int) -> Tensor:
    """``(n, M*K)`` logits -> the softmax of each block of ``k`` columns, same shape."""
    return F.softmax(u.reshape(len(u), -1, k), dim=2).reshape(u.shape)


def entropy(p: Tensor, dim: int = -1) -> Tensor:
    """Shannon entropy (nats) of probability vectors along ``dim``."""
    return -(p * torch.log(p.clamp_min(1e-30))).sum(dim)


class SUBIC(HashingLoss):
    """Classification on the block softmax, plus the mean-entropy and batch-entropy terms
    (module doc). ``u``: the ``(batch, M*K)`` encoder logits. The classifier
    (``nn.Linear(M*K, n_classes)``) belongs to the loss: give ``loss.parameters()`` to the
    optimizer too. Multi-hot labels (an extension) use binary cross-entropy per class.

    Args:
        bits: columns of ``u``, ``M * K``.
        n_classes: number of classes.
        k: block size K (a power of two; the paper's ImageNet codes: 8 blocks of 256).
        gamma: weight of the mean entropy (minimised).
        mu: weight of the batch entropy (maximised).
    """

    def __init__(
        self,
        bits: int,
        n_classes: int | None = None,
        *,
        k: int = 256,
        gamma: float = 1.0,
        mu: float = 1.0,
    ) -> None:
        if n_classes is None:
            raise ValueError("SUBIC needs n_classes (its classifier on the block softmax)")
        if k < 2 or bits % k:
            raise ValueError(f"SUBIC: {bits} outputs do not split into blocks of k={k}")
        super().__init__(bits, n_classes)
        self.k, self.blocks = int(k), bits // int(k)
        self.gamma, self.mu = float(gamma), float(mu)
        self.classifier = nn.Linear(bits, n_classes)
        self.last: dict[str, float] = {}

    def terms(self, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(block softmax ``z``, mean entropy, batch entropy), entropies in [0, 1]."""
        z = block_softmax(u, self.k)
        zb = z.reshape(len(z), self.blocks, self.k)
        scale = self.blocks * math.log(self.k)
        mean_entropy = entropy(zb).sum(1).mean() / scale
        batch_entropy = entropy(zb.mean(0)).sum() / scale
        return z, mean_entropy, batch_entropy

    def compute_loss(self, u: Tensor, labels: Tensor, index: Tensor | None) -> Tensor:
        z, mean_entropy, batch_entropy = self.terms(u)
        logits = self.classifier(z)
        if labels.dim() == 1:
            cls = F.cross_entropy(logits, labels.long())
        else:
            cls = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        cls = cls / math.log(max(2, logits.shape[1]))
        self.last = {
            "classification": float(cls.detach()),
            "mean_entropy": float(mean_entropy.detach()),
            "batch_entropy": float(batch_entropy.detach()),
        }
        return cls + self.gamma * mean_entropy - self.mu * batch_entropy

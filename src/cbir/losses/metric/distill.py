"""Distillation of the frozen features' similarities: a term that keeps the geometry.

A metric loss fit to the training classes pulls each class together and pushes the
classes apart, and forgets how the backbone arranged everything else; on classes never
seen in training that costs retrieval quality. This term adds, for every batch, the
mean squared difference between the cosine-similarity matrix of the learned embeddings
and that of the frozen (centred) backbone features of the same images, off the
diagonal, times ``weight`` (similarity-preserving distillation: Tung & Mori,
"Similarity-Preserving Knowledge Distillation", ICCV 2019; as a regulariser against
forgetting: Li & Hoiem, "Learning without Forgetting", TPAMI 2018).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def cosine_matrix(x: Tensor) -> Tensor:
    """Pairwise cosine similarities of the rows of ``x``."""
    z = F.normalize(x, dim=1)
    return z @ z.T


class SimilarityDistillation(nn.Module):
    """``weight * mean_{i != j} (cos(u_i, u_j) - cos(f_i, f_j))^2``.

    Args:
        weight: the term's weight beside the metric loss (0: off).
    """

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = float(weight)

    def forward(self, learned: Tensor, frozen: Tensor) -> Tensor:
        """The term for embeddings ``learned`` of images with frozen features ``frozen``."""
        n = len(learned)
        if n < 2 or self.weight == 0:
            return learned.new_zeros(())
        with torch.no_grad():
            target = cosine_matrix(frozen)
        diff = cosine_matrix(learned) - target
        off = ~torch.eye(n, dtype=torch.bool, device=diff.device)
        return self.weight * diff[off].pow(2).mean()

"""Two triplet miners that PML lacks as miners: every triplet, and one random triplet
per anchor (the "plain random triplets" baseline the sampling strategies are compared to).
Both are PML miners (``BaseMiner``): ``miner(embeddings, labels) -> (a, p, n)``.
"""

from __future__ import annotations

from typing import Any

import torch
from pytorch_metric_learning.miners import BaseMiner
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from torch import Tensor


class AllTripletsMiner(BaseMiner):
    """Every valid triplet of the batch (a != p share a label, n has another label)."""

    def mine(
        self, embeddings: Tensor, labels: Tensor, ref_emb: Tensor, ref_labels: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        a, p, n = lmu.get_all_triplets_indices(labels, ref_labels)
        return a, p, n


class RandomTripletsMiner(BaseMiner):
    """One triplet per anchor: a positive and a negative drawn uniformly from the batch
    (anchors without a positive or a negative get none). Uses ``generator`` or torch's
    global generator, which the trainer seeds.

    Args:
        generator: optional ``torch.Generator`` for the draws.
    """

    def __init__(self, generator: torch.Generator | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.generator = generator

    def mine(
        self, embeddings: Tensor, labels: Tensor, ref_emb: Tensor, ref_labels: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        same, diff = lmu.get_matches_and_diffs(labels, ref_labels)
        same, diff = same.bool(), diff.bool()
        ok = same.any(1) & diff.any(1)
        n_a, n_r = same.shape
        r = torch.rand(n_a, n_r, generator=self.generator).to(embeddings.device)
        p = r.masked_fill(~same, -1.0).argmax(1)
        r = torch.rand(n_a, n_r, generator=self.generator).to(embeddings.device)
        n = r.masked_fill(~diff, -1.0).argmax(1)
        a = torch.arange(n_a, device=embeddings.device)
        return a[ok], p[ok], n[ok]

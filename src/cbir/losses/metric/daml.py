"""DAML: Duan, Zheng, Lu, Zhou, "Deep Adversarial Metric Learning", CVPR 2018.

A generator turns each (anchor, positive, negative) triplet of embeddings into a synthetic
*hard* negative, and the metric is trained on the synthetic triplets (triplet form,
Sec. 3.2-3.3). With ``y``, ``y+``, ``y-`` the unit embeddings and ``y~`` the synthetic
negative, the generator minimises::

    J_gen = |y~ - y|^2                                  (hardness: close to the anchor)
            + reg * |y~ - y-|^2                         (regularisation: close to the negative)
            + adv * [D(y~, y) - D(y+, y) - margin]_+    (adversarial: violates the metric)

and the metric minimises ``J_m = [D(y, y+) - D(y, y~) + margin]_+`` (D Euclidean), jointly:
one step minimises ``J_gen + weight * J_m``, with the generator's terms reaching only
the generator (the embeddings enter them detached) and the metric's only the embedding
head (the synthetic negative enters it detached), so the two play their adversarial
parts. The loss owns the generator: give ``loss.parameters()`` to the optimiser.

Choices of this implementation (the paper leaves them to the architecture): the
generator is a two-layer MLP on the concatenated triplet whose output is added to the
real negative and put back on the unit sphere, its last layer starting at zero, so the
first steps train on the real triplets; triplets are one random positive and negative per
anchor of the batch (easy ones: the generator makes them hard), or a miner's triplets.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cbir.losses.metric.miners import RandomTripletsMiner


class HardNegativeGenerator(nn.Module):
    """``(y, y+, y-) -> y~``: a synthetic negative on the unit sphere near ``y-``.

    Args:
        dim: embedding dimension.
        hidden: hidden width (default: ``dim``).
    """

    def __init__(self, dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or dim
        self.net = nn.Sequential(nn.Linear(3 * dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        last = self.net[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, anchor: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        step = self.net(torch.cat([anchor, positive, negative], dim=1))
        return F.normalize(negative + step, dim=1)


class DAMLLoss(nn.Module):
    """DAML in triplet form (module doc): ``loss(embeddings, labels, indices_tuple=None)``.

    Args:
        dim: embedding dimension.
        margin: the triplet margin (on Euclidean distances of unit vectors).
        reg: weight of the regularisation term (lambda_1).
        adv: weight of the adversarial term (lambda_2).
        weight: weight of the metric loss on the synthetic triplets (lambda).
        hidden: the generator's hidden width (default: ``dim``).
    """

    def __init__(
        self,
        dim: int,
        margin: float = 0.1,
        reg: float = 1.0,
        adv: float = 50.0,
        weight: float = 1.0,
        hidden: int | None = None,
    ) -> None:
        super().__init__()
        self.margin, self.reg, self.adv, self.weight = (
            float(margin),
            float(reg),
            float(adv),
            float(weight),
        )
        self.generator = HardNegativeGenerator(int(dim), hidden)
        self.miner = RandomTripletsMiner()
        self.last: dict[str, float] = {}

    def triplets(self, emb: Tensor, labels: Tensor, indices_tuple: Any) -> tuple[Tensor, ...]:
        """(a, p, n) index tensors: a miner's triplets, else one random triplet per anchor."""
        if indices_tuple is not None and len(indices_tuple) == 3:
            return tuple(indices_tuple)
        return tuple(self.miner(emb, labels))

    def forward(self, embeddings: Tensor, labels: Tensor, indices_tuple: Any = None) -> Tensor:
        y = F.normalize(embeddings, dim=1)
        a, p, n = self.triplets(y, labels, indices_tuple)
        if len(a) == 0:
            return embeddings.sum() * 0.0
        ya, yp, yn = y[a], y[p], y[n]
        # the generator's objective: the embeddings enter detached
        da, dp, dn = ya.detach(), yp.detach(), yn.detach()
        fake = self.generator(da, dp, dn)
        hard = (fake - da).pow(2).sum(1).mean()
        reg = (fake - dn).pow(2).sum(1).mean()
        d_pos = (dp - da).norm(dim=1)
        adv = F.relu((fake - da).norm(dim=1) - d_pos - self.margin).mean()
        j_gen = hard + self.reg * reg + self.adv * adv
        # the metric's objective on the synthetic triplets: the negative enters detached
        j_m = F.relu((yp - ya).norm(dim=1) - (fake.detach() - ya).norm(dim=1) + self.margin).mean()
        self.last = {"j_gen": float(j_gen.detach()), "j_m": float(j_m.detach())}
        return j_gen + self.weight * j_m

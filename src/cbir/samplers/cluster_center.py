"""Cluster-centre anchors, strategy 5 of the MassImageRetrieval seed (README: "anchors
chosen by the cluster centre, positives and negatives chosen outside a given radius";
its ``cluster_one_class`` keeps the 20% of a class nearest the class mean as anchors and
the 25% farthest as positives and negatives)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from cbir.errors import CbirError
from cbir.samplers.base import (
    BatchSampler,
    embed_all,
    interleave,
    need_triplets,
    random_negative,
    random_positive,
)


class ClusterCenterSampler(BatchSampler):
    """Batches of triplets ``(a, p, n, ...)``: anchors near their class centre, positives
    and negatives outside a radius around their own class centre.

    After each epoch the training set is embedded (L2-normalised); per class, ``r_i`` is
    the distance of sample ``i`` to its class mean. Anchors are the samples with ``r_i``
    within the class's ``anchor_quantile``; the *outer* samples are those with ``r_i`` at
    or beyond the class's ``outer_quantile`` (the radius). A triplet is an anchor, an
    outer sample of its class and an outer sample of another class. Before the first
    epoch ends, triplets are random. ``batch_size // 3`` triplets per batch; miner
    ``as-sampled`` trains on exactly these.

    Args:
        labels, batch_size, seed, m: see :class:`BatchSampler`.
        anchor_quantile: share of each class used as anchors (0.2 in the seed).
        outer_quantile: the radius as a quantile of the distances to the centre (0.75).
    """

    def __init__(
        self, labels: np.ndarray, batch_size: int, seed: int = 0, m: int = 4,
        anchor_quantile: float = 0.2, outer_quantile: float = 0.75,
    ) -> None:  # fmt: skip
        super().__init__(labels, batch_size, seed, m)
        need_triplets(self)
        if not 0 < anchor_quantile <= 1 or not 0 <= outer_quantile < 1:
            raise CbirError(
                f"need 0 < anchor_quantile <= 1 and 0 <= outer_quantile < 1, got {anchor_quantile}, {outer_quantile}"
            )
        self.anchor_quantile, self.outer_quantile = float(anchor_quantile), float(outer_quantile)
        self.n_triplets = max(1, self.batch_size // 3)
        self.anchors = np.concatenate([ix for ix in self.by_class if len(ix) >= 2])
        self.outer: list[np.ndarray] = list(self.by_class)
        self.radius: np.ndarray | None = None

    def end_epoch(self, head: torch.nn.Module, x: torch.Tensor) -> None:
        """Anchors and outer samples under the current ``head``."""
        self.fit(embed_all(head, x))

    def fit(self, e: np.ndarray) -> None:
        """Anchors, radii and outer samples from embeddings ``e`` (n, d)."""
        anchors, outer, radius = [], [], np.zeros(self.n_classes)
        for k, ix in enumerate(self.by_class):
            r = np.linalg.norm(e[ix] - e[ix].mean(0), axis=1)
            radius[k] = np.quantile(r, self.outer_quantile)
            outer.append(ix[r >= radius[k]])
            if len(ix) >= 2:
                anchors.append(ix[r <= np.quantile(r, self.anchor_quantile)])
        self.anchors, self.outer, self.radius = np.concatenate(anchors), outer, radius

    def epoch(self, epoch: int) -> Iterator[np.ndarray]:
        rng = self.rng(epoch)
        outer_all = np.concatenate(self.outer)
        for _ in range(self.steps):
            a = rng.choice(self.anchors, size=self.n_triplets)
            p = random_positive(rng, self.by_class, self.class_of, a, pools=self.outer)
            n = outer_all[random_negative(rng, self.class_of[outer_all], self.class_of[a])]
            yield interleave(a, p, n)

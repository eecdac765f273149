"""Inverse-frequency sampling, strategy 2 of the MassImageRetrieval seed (README: "record
how many times each sample was drawn, turn it into a distribution p, and draw next with
(1 - p)")."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from cbir.errors import CbirError
from cbir.samplers.base import BatchSampler


class InverseFrequencySampler(BatchSampler):
    """Class-balanced batches whose samples are drawn with weight ``1 - p_i``.

    ``share="sum"`` (the seed's rule): ``p_i = c_i / sum_j c_j``, ``c_i`` the number of
    past draws of sample ``i``. On a large set every ``p_i`` is about ``1/n`` and the
    weights are nearly uniform. ``share="max"``: ``p_i = c_i / (max_j c_j + 1)``, which
    keeps the weights in ``(0, 1]`` and spread out at any ``n``.

    Args:
        labels, batch_size, seed, m: see :class:`BatchSampler`.
        share: "sum" or "max".
    """

    def __init__(
        self, labels: np.ndarray, batch_size: int, seed: int = 0, m: int = 4, share: str = "sum"
    ) -> None:
        super().__init__(labels, batch_size, seed, m)
        if share not in ("sum", "max"):
            raise CbirError(f"share must be 'sum' or 'max', got {share!r}")
        self.share = share
        self.draws = np.zeros(self.n, np.int64)

    def weights(self) -> np.ndarray:
        """``1 - p``: the weight of each sample in the next draw."""
        total = self.draws.sum()
        if total == 0:
            return np.ones(self.n)
        denom = total if self.share == "sum" else self.draws.max() + 1
        return 1.0 - self.draws / denom

    def epoch(self, epoch: int) -> Iterator[np.ndarray]:
        rng = self.rng(epoch)
        for _ in range(self.steps):
            batch = self.balanced_batch(rng, self.weights())
            self.draws[batch] += 1
            yield batch

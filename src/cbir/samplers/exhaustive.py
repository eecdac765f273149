"""Exhaustive epochs, strategy 1 of the MassImageRetrieval seed (README: "keep a set so
that a sampled item is not sampled again until none is left, then end the epoch").
PML's ``MPerClassSampler`` draws with replacement across batches and does not cover an
epoch; this one does."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from cbir.samplers.base import BatchSampler


class ExhaustiveSampler(BatchSampler):
    """Every sample exactly once per epoch, without replacement.

    Each class's samples are shuffled; a batch takes ``m`` from each of the classes
    that still have ``m`` left (classes drawn in proportion to what they have left, so
    they run out together) while that fills it, then tops up with the leftovers of any
    class. There are ``ceil(n / batch_size)`` batches; only the last may be short.
    """

    def epoch(self, epoch: int) -> Iterator[np.ndarray]:
        rng = self.rng(epoch)
        pools = [list(rng.permutation(ix)) for ix in self.by_class]
        left = self.class_sizes.copy()
        while left.sum() > 0:
            batch: list[int] = []
            need = self.batch_size
            full = np.flatnonzero(left >= self.m)
            if len(full):
                order = rng.choice(
                    full, size=len(full), replace=False, p=left[full] / left[full].sum()
                )
                for k in order:
                    take = min(self.m, need)
                    batch += pools[k][-take:]
                    del pools[k][-take:]
                    left[k] -= take
                    need -= take
                    if need == 0:
                        break
            if need > 0 and left.sum() > 0:
                rest = np.concatenate([np.asarray(p, np.int64) for p in pools])
                pick = rng.permutation(len(rest))[:need]
                chosen = set(rest[pick].tolist())
                batch += rest[pick].tolist()
                for k in range(self.n_classes):
                    if left[k]:
                        pools[k] = [i for i in pools[k] if i not in chosen]
                        left[k] = len(pools[k])
            yield np.asarray(batch, np.int64)

"""What every batch sampler shares: the classes of the training set, a seeded
generator per epoch, and class-balanced batches drawn with per-sample weights.

A sampler's ``epoch(epoch)`` yields the dataset indices of each batch of that epoch
(``steps = n // batch_size`` batches, the trainer's budget, unless the sampler says
otherwise). Optional hooks the trainer calls: ``observe(idx, loss_fn, embeddings,
labels)`` after each step, ``end_epoch(head, x)`` after each epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from cbir.errors import CbirError


class BatchSampler:
    """Base class (see the module doc).

    Args:
        labels: ``(n,)`` class id of each training sample (one class per sample).
        batch_size: samples per batch.
        seed: the same seed and epoch give the same batches.
        m: samples per class in a class-balanced batch; raised to
            ``ceil(batch_size / n_classes)`` when there are too few classes to fill it.
    """

    def __init__(self, labels: np.ndarray, batch_size: int, seed: int = 0, m: int = 4) -> None:
        y = np.asarray(labels)
        if y.ndim != 1:
            raise CbirError(
                f"metric-learning samplers need one class per sample; got labels of shape {y.shape} "
                "(multi-label data: train a hashing method instead)"
            )
        if len(y) == 0:
            raise CbirError("the training split is empty")
        if batch_size < 2 or m < 1:
            raise CbirError(f"batch_size must be >= 2 and m >= 1, got {batch_size} and {m}")
        self.labels = y
        self.n = len(y)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.classes, self.class_of = np.unique(y, return_inverse=True)
        self.n_classes = len(self.classes)
        self.by_class = [np.flatnonzero(self.class_of == k) for k in range(self.n_classes)]
        self.class_sizes = np.array([len(ix) for ix in self.by_class])
        self.m = max(int(m), math.ceil(self.batch_size / self.n_classes))
        self.steps = max(1, self.n // self.batch_size)

    def rng(self, epoch: int) -> np.random.Generator:
        """The generator of ``epoch`` (independent of any global state)."""
        return np.random.default_rng([self.seed, int(epoch), 0x5A17])

    def epoch(self, epoch: int) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def balanced_batch(
        self, rng: np.random.Generator, weights: np.ndarray | None = None
    ) -> np.ndarray:
        """One batch of distinct samples: classes drawn without replacement with
        probability proportional to their total weight, then up to ``m`` samples of each
        drawn without replacement proportionally to ``weights`` (uniform if None)."""
        w = np.ones(self.n) if weights is None else np.asarray(weights, np.float64)
        class_w = np.bincount(self.class_of, weights=w, minlength=self.n_classes)
        live = np.flatnonzero(class_w > 0)
        if len(live) == 0:
            raise CbirError("every sample has weight 0; nothing to draw")
        order = rng.choice(
            live,
            size=min(len(live), self.batch_size),
            replace=False,
            p=class_w[live] / class_w[live].sum(),
        )
        out: list[np.ndarray] = []
        need = self.batch_size
        for k in order:
            ix = self.by_class[k]
            wk = w[ix]
            take = min(self.m, need, int(np.count_nonzero(wk)))
            out.append(rng.choice(ix, size=take, replace=False, p=wk / wk.sum()))
            need -= take
            if need == 0:
                break
        return np.concatenate(out)


class RandomSampler(BatchSampler):
    """Plain random batches: a fresh permutation per epoch cut into ``n // batch_size``
    full batches (what the trainer does without a sampler)."""

    def epoch(self, epoch: int) -> Iterator[np.ndarray]:
        order = self.rng(epoch).permutation(self.n)
        if self.n < self.batch_size:
            yield order
            return
        for i in range(self.steps):
            yield order[i * self.batch_size : (i + 1) * self.batch_size]


class MPerClassSampler(BatchSampler):
    """PML's ``MPerClassSampler`` (m samples of each of ``batch_size / m`` random classes
    per batch, with replacement across batches), ``steps`` batches per epoch, seeded.

    ``m`` is raised to the smallest divisor of ``batch_size`` with ``m * n_classes >=
    batch_size`` (PML's two requirements).
    """

    def __init__(self, labels: np.ndarray, batch_size: int, seed: int = 0, m: int = 4) -> None:
        super().__init__(labels, batch_size, seed, m)
        self.m = next(d for d in range(self.m, self.batch_size + 1) if self.batch_size % d == 0)

    def epoch(self, epoch: int) -> Iterator[np.ndarray]:
        from pytorch_metric_learning.samplers import MPerClassSampler as PMLSampler
        from pytorch_metric_learning.utils import common_functions as c_f

        s = PMLSampler(
            self.labels,
            self.m,
            self.batch_size,
            length_before_new_iter=self.steps * self.batch_size,
        )
        saved = c_f.NUMPY_RANDOM
        c_f.NUMPY_RANDOM = np.random.RandomState(
            np.random.SeedSequence([self.seed, int(epoch)]).generate_state(1)[0]
        )
        try:
            order = np.fromiter(iter(s), dtype=np.int64)
        finally:
            c_f.NUMPY_RANDOM = saved
        for i in range(len(order) // self.batch_size):
            yield order[i * self.batch_size : (i + 1) * self.batch_size]


def interleave(a: np.ndarray, p: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Triplets laid out as one batch ``(a0, p0, n0, a1, p1, n1, ...)``: the layout of
    PML's ``EmbeddingsAlreadyPackagedAsTriplets`` (miner ``as-sampled``)."""
    return np.stack([a, p, n], axis=1).reshape(-1)


@torch.no_grad()
def embed_all(head: torch.nn.Module, x: torch.Tensor, chunk: int = 4096) -> np.ndarray:
    """L2-normalised head outputs of every row of ``x`` (eval mode, then restored)."""
    was = head.training
    head.eval()
    try:
        out = [
            torch.nn.functional.normalize(head(x[i : i + chunk]), dim=1)
            for i in range(0, len(x), chunk)
        ]
    finally:
        head.train(was)
    return torch.cat(out).numpy().astype(np.float32)


def need_triplets(s: BatchSampler) -> None:
    """Triplet samplers need two classes and a class with two samples."""
    if s.n_classes < 2 or s.class_sizes.max() < 2:
        raise CbirError(
            f"{type(s).__name__} needs >= 2 classes and a class with >= 2 samples (got {s.n_classes} classes)"
        )
    if s.batch_size < 3:
        raise CbirError(
            f"{type(s).__name__} needs batch_size >= 3 (one triplet), got {s.batch_size}"
        )


def random_positive(
    rng: np.random.Generator,
    by_class: list[np.ndarray],
    class_of: np.ndarray,
    anchors: np.ndarray,
    pools: list[np.ndarray] | None = None,
) -> np.ndarray:
    """For each anchor, a random other sample of its class, from ``pools[class]`` when
    given and holding a sample other than the anchor (else from the whole class)."""
    out = np.empty(len(anchors), np.int64)
    for i, a in enumerate(anchors):
        c = class_of[a]
        pool = by_class[c] if pools is None else pools[c]
        p = pool[rng.integers(len(pool))] if len(pool) else a
        if p == a:
            others = pool[pool != a]
            if not len(others):
                others = by_class[c][by_class[c] != a]
            p = others[rng.integers(len(others))]
        out[i] = p
    return out


def random_negative(
    rng: np.random.Generator, class_of: np.ndarray, anchor_classes: np.ndarray
) -> np.ndarray:
    """For each anchor class, the index of a uniformly random entry of ``class_of`` with
    another class (rejection sampling; ``class_of`` must hold two classes or more)."""
    out = rng.integers(len(class_of), size=len(anchor_classes))
    bad = class_of[out] == anchor_classes
    while bad.any():
        out[bad] = rng.integers(len(class_of), size=int(bad.sum()))
        bad = class_of[out] == anchor_classes
    return out

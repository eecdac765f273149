"""Distance-matrix-guided negatives, strategy 4 of the MassImageRetrieval seed (README:
"after each epoch, turn the distance matrix of the whole training set into a probability
matrix that guides the sampler")."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from cbir.samplers.base import (
    BatchSampler,
    embed_all,
    interleave,
    need_triplets,
    random_negative,
    random_positive,
)


class DistanceGuidedSampler(BatchSampler):
    """Batches of triplets ``(a, p, n, a, p, n, ...)`` with negatives drawn from the
    distance matrix under the current head.

    After each epoch the training set is embedded (L2-normalised) and, chunk by chunk
    (memory ``O(chunk * pool + n * k)``, never ``n x n``), each sample's ``k`` nearest
    samples of other classes among ``pool`` random candidates are kept with
    probabilities ``softmax(-d / temperature)``: the closer, the likelier. A triplet is a
    random anchor (of a class with >= 2 samples), a random positive of its class and a
    negative drawn from those probabilities (uniform over other classes before the first
    epoch ends). ``batch_size // 3`` triplets per batch; use miner ``as-sampled`` to
    train on exactly these triplets, or any in-batch miner.

    Args:
        labels, batch_size, seed, m: see :class:`BatchSampler`.
        k: candidate negatives kept per sample.
        temperature: of the softmax over distances (Euclidean on the unit sphere, 0..2).
        pool: candidates searched per epoch (all samples if the set is smaller).
        chunk: rows of the distance matrix computed at a time.
    """

    def __init__(
        self, labels: np.ndarray, batch_size: int, seed: int = 0, m: int = 4,
        k: int = 32, temperature: float = 0.1, pool: int = 4096, chunk: int = 1024,
    ) -> None:  # fmt: skip
        super().__init__(labels, batch_size, seed, m)
        need_triplets(self)
        self.k, self.temperature, self.pool, self.chunk = (
            int(k),
            float(temperature),
            int(pool),
            int(chunk),
        )
        self.neighbours: np.ndarray | None = None
        self.cum_probs: np.ndarray | None = None
        self.anchor_pool = np.concatenate(
            [ix for ix in self.by_class if len(ix) >= 2] or [np.arange(0)]
        )
        self.n_triplets = max(1, self.batch_size // 3)
        self._epochs_seen = 0

    def end_epoch(self, head: torch.nn.Module, x: torch.Tensor) -> None:
        """Hard-negative probabilities of every sample under the current ``head``."""
        self._epochs_seen += 1
        e = embed_all(head, x)
        self.fit(e)

    def fit(self, e: np.ndarray) -> None:
        """Hard-negative candidates and probabilities from embeddings ``e`` (n, d)."""
        rng = np.random.default_rng([self.seed, self._epochs_seen, 0xD157])
        cand = np.sort(rng.choice(self.n, size=min(self.pool, self.n), replace=False))
        ec, lc = torch.from_numpy(e[cand]), torch.from_numpy(self.class_of[cand])
        k = min(self.k, len(cand))
        nbr = np.zeros((self.n, k), np.int64)
        prob = np.zeros((self.n, k))
        for s in range(0, self.n, self.chunk):
            rows = torch.from_numpy(e[s : s + self.chunk])
            d = torch.cdist(rows, ec)
            d = d.masked_fill(
                torch.from_numpy(self.class_of[s : s + self.chunk])[:, None] == lc[None, :],
                float("inf"),
            )
            dist, j = torch.topk(d, k, dim=1, largest=False)
            logits = (-dist / self.temperature).double()
            p = torch.softmax(logits, dim=1).nan_to_num(0.0)
            nbr[s : s + len(rows)] = cand[j.numpy()]
            prob[s : s + len(rows)] = p.numpy()
        self.neighbours = nbr
        self.cum_probs = np.cumsum(prob, axis=1)

    def _negatives(self, rng: np.random.Generator, anchors: np.ndarray) -> np.ndarray:
        if self.neighbours is None or self.cum_probs is None:
            return random_negative(rng, self.class_of, self.class_of[anchors])
        cp = self.cum_probs[anchors]
        u = rng.random(len(anchors)) * cp[:, -1]
        j = np.minimum((cp < u[:, None]).sum(1), cp.shape[1] - 1)
        neg = self.neighbours[anchors, j]
        none = cp[:, -1] <= 0  # no sample of another class among the candidates
        if none.any():
            neg[none] = random_negative(rng, self.class_of, self.class_of[anchors[none]])
        return neg

    def epoch(self, epoch: int) -> Iterator[np.ndarray]:
        rng = self.rng(epoch)
        for _ in range(self.steps):
            a = rng.choice(self.anchor_pool, size=self.n_triplets)
            p = random_positive(rng, self.by_class, self.class_of, a)
            yield interleave(a, p, self._negatives(rng, a))

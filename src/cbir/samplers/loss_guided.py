"""Loss-guided sampling, strategy 3 of the MassImageRetrieval seed (README: "the loss is
max(0, dist loss); samples recorded with loss 0 in training contribute no gradient, and
that guides the sampling")."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cbir.errors import CbirError
from cbir.samplers.base import BatchSampler


@torch.no_grad()
def per_sample_losses(
    loss_fn: Any, embeddings: Tensor, labels: Tensor, margin: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """Loss of each sample of a batch, and a mask of the samples it covers.

    A PML loss is called without its reducer (``compute_loss``) on every pair / sample of
    the batch, and each element or pair loss is added to its anchor. Triplet-type losses
    (triplet margin, margin) are called on each anchor's hardest triplet (PML's
    batch-hard miner), which is zero exactly when all its triplets are, at O(n^2) instead
    of O(n^3). Losses that give no per-sample value (Proxy-Anchor: per proxy) or are not
    PML losses fall back to a per-anchor batch-hard triplet hinge
    ``max(0, max d_ap - min d_an + margin)`` on L2-normalised embeddings.
    """
    from pytorch_metric_learning.losses import (
        BaseMetricLossFunction,
        MarginLoss,
        ProxyAnchorLoss,
        TripletMarginLoss,
    )
    from pytorch_metric_learning.miners import BatchHardMiner

    n = len(embeddings)
    out = np.zeros(n)
    covered = np.zeros(n, bool)
    # Proxy-Anchor's "element" losses are per proxy, not per sample: use the fallback.
    if isinstance(loss_fn, BaseMetricLossFunction) and not isinstance(loss_fn, ProxyAnchorLoss):
        hardest = isinstance(loss_fn, (TripletMarginLoss, MarginLoss))
        tuples = BatchHardMiner()(embeddings, labels) if hardest else None
        parts = loss_fn.compute_loss(embeddings, labels, tuples, embeddings, labels)
        for info in parts.values():
            losses, ind, kind = info["losses"], info["indices"], info["reduction_type"]
            if kind == "already_reduced" or not torch.is_tensor(losses) or losses.numel() == 0:
                continue
            anchors = ind if kind == "element" else ind[0]
            ix = anchors.cpu().numpy()
            out += np.bincount(ix, weights=losses.detach().double().cpu().numpy(), minlength=n)
            covered[ix] = True
        if covered.any():
            return out, covered
    x = torch.nn.functional.normalize(embeddings.detach().double(), dim=1)
    d = torch.cdist(x, x)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(n, dtype=torch.bool)
    pos = same & ~eye
    ok = pos.any(1) & (~same).any(1)
    far = d.masked_fill(~pos, -1.0).amax(1)
    near = d.masked_fill(same, float("inf")).amin(1)
    hinge = (far - near + margin).clamp(min=0)
    return np.where(ok.numpy(), hinge.numpy(), 0.0), ok.numpy()


class LossGuidedSampler(BatchSampler):
    """Class-balanced batches drawn with per-sample weights from recent losses.

    After each step, each sample's loss (:func:`per_sample_losses`) updates its running
    value ``l_i <- decay * l_i + (1 - decay) * loss`` (the first value as is). The weight
    of a seen sample is ``clip(l_i / mean_seen(l), floor, cap)``: zero-loss samples get
    ``floor``, samples at the mean loss 1, large-loss samples up to ``cap``. Samples not
    seen yet keep weight 1.

    Args:
        labels, batch_size, seed, m: see :class:`BatchSampler`.
        decay: weight of the old value in the running loss.
        floor: weight of a zero-loss sample (> 0, so it is still drawn sometimes).
        cap: largest weight.
    """

    def __init__(
        self, labels: np.ndarray, batch_size: int, seed: int = 0, m: int = 4,
        decay: float = 0.5, floor: float = 0.1, cap: float = 10.0,
    ) -> None:  # fmt: skip
        super().__init__(labels, batch_size, seed, m)
        if not (0 <= decay < 1 and 0 < floor <= 1 <= cap):
            raise CbirError(
                f"need 0 <= decay < 1 and 0 < floor <= 1 <= cap; got {decay}, {floor}, {cap}"
            )
        self.decay, self.floor, self.cap = float(decay), float(floor), float(cap)
        self.loss = np.full(self.n, np.nan)

    def weights(self) -> np.ndarray:
        """The weight of each sample in the next draw (see the class doc)."""
        w = np.ones(self.n)
        seen = ~np.isnan(self.loss)
        if seen.any():
            mean = self.loss[seen].mean()
            rel = self.loss[seen] / mean if mean > 0 else np.zeros(int(seen.sum()))
            w[seen] = np.clip(rel, self.floor, self.cap)
        return w

    def observe(self, idx: np.ndarray, loss_fn: Any, embeddings: Tensor, labels: Tensor) -> None:
        """Record the losses of the batch ``idx`` (dataset indices) just trained on."""
        values, covered = per_sample_losses(loss_fn, embeddings, labels)
        idx = np.asarray(idx)[covered]
        values = values[covered]
        old = self.loss[idx]
        self.loss[idx] = np.where(
            np.isnan(old), values, self.decay * old + (1 - self.decay) * values
        )

    def epoch(self, epoch: int) -> Iterator[np.ndarray]:
        rng = self.rng(epoch)
        for _ in range(self.steps):
            yield self.balanced_batch(rng, self.weights())

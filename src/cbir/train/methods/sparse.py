"""Sparse codes for the inverted index (``cbir train --method sparse-topk|sparse-l1``).

See :mod:`cbir.heads.sparse` for the models. Options (``--loss-option KEY=VALUE``):

- ``k``: active units per code (sparse-topk: required, default 32; sparse-l1: optional cap).
- ``l1``: weight of the L1 penalty, on the mean L1 norm of the codes (sparse-l1; default
  0.005).
- ``supervised``: weight of the label term (normalised softmax on the codes; default 0:
  unsupervised); ``temperature``: its temperature (default 0.05).

The loss is ``mse(decoder(code), x) [+ l1 * mean|code|] [+ supervised * NormSoftmax]``
on standardised features, with the run's optimiser and schedule; decoder atoms are kept
at unit norm after every step.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import NormalizedSoftmaxLoss
from torch import Tensor

from cbir.errors import CbirError
from cbir.heads.head import Head
from cbir.heads.learned import LearnedTransform
from cbir.heads.sparse import SPARSE_METHODS, SparseAutoencoder
from cbir.train.config import SparseOptions, TrainConfig
from cbir.train.data import TrainData, evaluate_transform
from cbir.train.loop import Model, Trainable, batches, train_epochs
from cbir.train.methods.base import Method
from cbir.train.runs import make_checkpoint

OPTIONS = ("k", "l1", "supervised", "temperature")
EVAL_KEYS = ("map", "map@r", "recall@1")


def sparse_options(method: str, options: dict[str, Any], dim: int) -> dict[str, Any]:
    """Validated options of a sparse method (defaults filled in)."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise CbirError(
            f"unknown --loss-option {', '.join(unknown)} for {method}; known: {', '.join(OPTIONS)}"
        )
    topk = method == "sparse-topk"
    k = options.get("k", 32 if topk else None)
    if k is not None and (int(k) < 1 or int(k) > dim):
        raise CbirError(f"--loss-option k={k}: must be between 1 and --dim {dim}")
    return {
        "activation": "topk" if topk else "relu",
        "k": None if k is None else int(k),
        "l1": 0.0 if topk else float(options.get("l1", 0.005)),
        "supervised": float(options.get("supervised", 0.0)),
        "temperature": float(options.get("temperature", 0.05)),
    }


class SparseModel(Trainable):
    """A sparse autoencoder whose encoder is the head the index uses."""

    def __init__(self, cfg: TrainConfig, data: TrainData) -> None:
        dim = cfg.options.width
        self.cfg, self.data = cfg, data
        self.opts = opts = sparse_options(cfg.method, cfg.options.loss_options, dim)  # type: ignore[attr-defined]
        x_np = np.ascontiguousarray(data.x, np.float32)
        self.mean = x_np.mean(0)
        self.std = x_np.std(0) + 1e-6
        self.x = torch.from_numpy((x_np - self.mean) / self.std)
        self.n = len(self.x)
        self.encoder = Head(self.x.shape[1], dim, cfg.hidden, cfg.dropout, cfg.batchnorm)
        self.model = SparseAutoencoder(self.encoder, self.x.shape[1], opts["activation"], opts["k"])
        self.params = list(self.model.parameters())
        self.label_loss = None
        if opts["supervised"] > 0:
            self.label_loss = NormalizedSoftmaxLoss(
                data.n_classes, dim, temperature=opts["temperature"]
            )
            self.params += list(self.label_loss.parameters())
        self.y = torch.from_numpy(np.asarray(data.y))
        self.steps_per_epoch = max(1, self.n // cfg.batch_size)
        self.gen = np.random.default_rng(cfg.seed)
        self.extra: dict[str, Any] = {"sparse": {"activation": opts["activation"], "k": opts["k"]}}

    def param_groups(self) -> list[Any]:
        return self.params

    def train_mode(self) -> None:
        self.model.train()

    def batches(self, epoch: int) -> Iterable[Any]:
        return batches(self.gen.permutation(self.n), self.cfg.batch_size)

    def step(self, batch: Any) -> tuple[Tensor, float, dict[str, float]]:
        it = torch.from_numpy(np.asarray(batch, np.int64))
        xb = self.x[it]
        h, recon = self.model(xb)
        mse = F.mse_loss(recon, xb)
        loss = mse
        if self.opts["l1"]:
            loss = loss + self.opts["l1"] * h.abs().sum(1).mean()
        if self.label_loss is not None:
            loss = loss + self.opts["supervised"] * self.label_loss(h, self.y[it])
        active = float((h > 0).sum(1).float().mean())
        return loss, len(batch), {"mse": mse.item(), "active": active}

    def after_step(self, step: int) -> None:
        self.model.normalise()  # unit-norm decoder atoms

    def evaluate(self, limit: int | None) -> dict[str, Any]:
        m = evaluate_transform(LearnedTransform(self.checkpoint({})), self.data, limit=limit)
        out: dict[str, Any] = {k: round(float(m[k]), 5) for k in EVAL_KEYS if k in m}
        out["queries"] = m.get("n_queries")
        return out

    def checkpoint(self, extra: dict[str, Any]) -> dict[str, Any]:
        self.encoder.eval()
        fp = self.data.fingerprint
        return make_checkpoint(
            self.cfg, self.encoder, self.mean, self.std, fp, {**extra, **self.extra}
        )

    @torch.no_grad()
    def measure(self) -> None:
        """Active units per code and units used, on (up to 4,096) training features."""
        self.encoder.eval()
        h, _ = self.model(self.x[: min(self.n, 4096)])
        self.extra["sparse"]["train_active_mean"] = round(float((h > 0).sum(1).float().mean()), 3)
        self.extra["sparse"]["train_dims_used"] = int(((h > 0).sum(0) > 0).sum())


class SparseMethod(Method):
    """Sparse codes: the k-sparse autoencoder and the L1 sparse autoencoder."""

    name = "sparse"
    options = SparseOptions
    tsne = False

    def names(self) -> tuple[str, ...]:
        return SPARSE_METHODS

    def prepare(self, cfg: TrainConfig) -> None:
        sparse_options(cfg.method, cfg.options.loss_options, cfg.options.width)  # type: ignore[attr-defined]

    def fit(self, cfg: TrainConfig, data: Any, show: bool) -> tuple[Model, list[dict[str, Any]]]:
        model = SparseModel(cfg, data)
        rows = train_epochs(cfg, model, show)
        model.measure()
        return model, rows

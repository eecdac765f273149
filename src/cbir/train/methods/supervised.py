"""Supervised heads: deep hashing (binary codes) and metric learning (float embeddings).

A :class:`~cbir.heads.head.Head` on standardised backbone features (or, with
``--finetune``, on the features of a backbone trained with it: :mod:`cbir.train.finetune`),
trained with a loss from :mod:`cbir.losses.hashing` or :mod:`cbir.losses.metric`, with an
optional batch sampler (:mod:`cbir.samplers`), miner, and feedback pairs from an index
(:mod:`cbir.train.feedback`).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from cbir.errors import CbirError
from cbir.heads.head import Head
from cbir.heads.learned import LearnedTransform
from cbir.heads.residual import HEADS, ResidualHead
from cbir.losses.hashing import HASHING_LOSSES, HashingLoss, get_hashing_loss
from cbir.losses.metric import METRIC_LOSSES, get_metric_loss, get_miner
from cbir.losses.metric.distill import SimilarityDistillation
from cbir.samplers import make_sampler
from cbir.train.config import HashingOptions, MetricOptions, TrainConfig
from cbir.train.data import TrainData, evaluate_transform
from cbir.train.feedback import FeedbackTerm, load_feedback
from cbir.train.finetune import Finetune
from cbir.train.loop import Model, Trainable, batches, train_epochs
from cbir.train.methods.base import Method
from cbir.train.runs import make_checkpoint

#: Figures of the evaluation rows of metrics.jsonl.
EVAL_KEYS = ("map", "p@h2", "map@r", "recall@1")
#: How a metric head's inputs are centred when it embeds (``--center``).
CENTERS = ("train", "collection")
#: How a metric head's embedding reaches --dim (``--reduce``).
REDUCES = ("head", "collection")
#: Pairwise hashing losses that can pair a batch with the whole training set.
MEMORY_BANK = ("dsh", "dpsh", "hashnet", "dch")


class SupervisedHead(Trainable):
    """A head and its supervised loss (the loss call is the family's: :meth:`loss`).

    Args:
        cfg: the run's configuration (options: :class:`HashingOptions` or
            :class:`MetricOptions`).
        data: the training data.
        show: print progress to stderr.
    """

    def __init__(self, cfg: TrainConfig, data: TrainData, show: bool) -> None:
        opts: Any = cfg.options
        self.cfg, self.data = cfg, data
        self.extra: dict[str, Any] = {}
        # the backbone is trained too (cbir.train.finetune)
        self.finetune = None if opts.finetune is None else Finetune(cfg, opts.finetune, show)
        x_np = np.ascontiguousarray(data.x, np.float32)
        self.mean = x_np.mean(0)
        std = x_np.std(0) + 1e-6
        if self.finetune is not None:  # features that were constant (dead units) move
            std = self.finetune.input_std(std)
        if not self.standardise():  # centred only: the head starts at the frozen geometry
            std = np.ones_like(std)
        self.std = std
        self.x = torch.from_numpy((x_np - self.mean) / std)
        self.y = torch.from_numpy(np.asarray(data.y))
        self.n = len(self.x)
        self.head = self.make_head()
        self.loss_fn = self.make_loss(data.n_classes, self.n)
        params: list[Any] = list(self.head.parameters()) + [
            p for p in self.loss_fn.parameters() if p.requires_grad
        ]
        if self.finetune is not None:  # the backbone's own parameter group and learning rate
            params = [{"params": params}, *self.finetune.param_groups()]
        self.params = params
        self.steps_per_epoch = max(1, self.n // cfg.batch_size)
        self.sampler = None
        if opts.sampler:
            self.sampler = make_sampler(
                opts.sampler, np.asarray(data.y), cfg.batch_size, seed=cfg.seed
            )
        self.miner = self.make_miner()
        self.feedback = None
        if opts.feedback:  # pairs from the judgements stored in an index
            fb = load_feedback(opts.feedback, data.fingerprint)
            xf = torch.from_numpy(((fb.features - self.mean) / std).astype(np.float32))
            self.feedback = FeedbackTerm(cfg.method, self.loss_fn, fb, xf, seed=cfg.seed)
            info = {"index": str(opts.feedback), **fb.summary(), "tuples": len(self.feedback)}
            self.extra["feedback"] = info
        self.gen = np.random.default_rng(cfg.seed)
        self._last: tuple[Any, Tensor, Tensor] | None = None

    @property
    def report(self) -> dict[str, Any]:
        return {"feedback": self.extra["feedback"]} if "feedback" in self.extra else {}

    # ------------------------------------------------------------ the family's part
    def standardise(self) -> bool:
        """Whether the head's inputs are scaled to unit variance (else only centred)."""
        return True

    def make_head(self) -> nn.Module:
        """The trained head on ``self.x`` (a plain MLP)."""
        cfg = self.cfg
        return Head(self.x.shape[1], cfg.options.width, cfg.hidden, cfg.dropout, cfg.batchnorm)

    @abstractmethod
    def make_loss(self, n_classes: int, n_train: int) -> nn.Module:
        """The family's loss for ``n_classes`` classes and ``n_train`` training images."""

    def make_miner(self) -> Any:
        return None

    @abstractmethod
    def loss(self, u: Tensor, it: Tensor) -> Tensor:
        """The loss of head outputs ``u`` of training images ``it``."""

    # ------------------------------------------------------------ the loop's part
    def param_groups(self) -> list[Any]:
        return self.params

    def train_mode(self) -> None:
        self.head.train()
        if self.finetune is not None:
            self.finetune.train()

    def batches(self, epoch: int) -> Iterable[Any]:
        if self.sampler is not None:
            return self.sampler.epoch(epoch)
        return batches(self.gen.permutation(self.n), self.cfg.batch_size)

    def step(self, batch: Any) -> tuple[Tensor, float, dict[str, float]]:
        it = torch.from_numpy(np.asarray(batch, np.int64))
        ft = self.finetune
        u = self.head(self.x[it] if ft is None else ft.inputs(it, self.mean, self.std))
        loss = self.loss(u, it)
        if self.feedback is not None:
            loss = loss + self.cfg.options.feedback_weight * self.feedback(self.head)
        self._last = (batch, u, it)
        return loss, len(batch), {}

    def after_step(self, step: int) -> None:
        if self.sampler is not None and hasattr(self.sampler, "observe"):
            assert self._last is not None
            idx, u, it = self._last
            self.sampler.observe(idx, self.loss_fn, u.detach(), self.y[it])

    def end_epoch(self) -> None:
        if self.sampler is not None and hasattr(self.sampler, "end_epoch"):
            self.sampler.end_epoch(self.head, self.x)

    def evaluate(self, limit: int | None) -> dict[str, Any]:
        tr = LearnedTransform(self.checkpoint({}))
        ft = self.finetune
        data = self.data if ft is None else ft.eval_data(self.data, limit)
        m = evaluate_transform(tr, data, limit=limit)
        out: dict[str, Any] = {k: round(float(m[k]), 5) for k in EVAL_KEYS if k in m}
        out["queries"] = m.get("n_queries")
        return out

    def checkpoint(self, extra: dict[str, Any]) -> dict[str, Any]:
        self.head.eval()
        fp = self.data.fingerprint
        center = getattr(self.cfg.options, "center", "train")
        spectral = getattr(self.cfg.options, "spectral", 0.0)
        reduce = self.cfg.options.width if self.reduces else None
        return make_checkpoint(
            self.cfg,
            self.head,
            self.mean,
            self.std,
            fp,
            {**extra, **self.extra},
            center,
            spectral,
            reduce,
        )

    @property
    def reduces(self) -> bool:
        """The outputs are reduced to the width on the collection (``--reduce collection``)."""
        return getattr(self.cfg.options, "reduce", "head") == "collection"

    def finish(self, run: Any) -> TrainData:
        """Write the fine-tuned backbone (run/backbone.pt); the data of its features."""
        if self.finetune is not None:
            self.data = self.finetune.finish(run, self.data, self.extra)
        return self.data


class HashingHead(SupervisedHead):
    """Binary codes: the loss sees dataset indices (for a memory bank) and steps per batch
    (HashNet's continuation, :meth:`cbir.losses.hashing.HashingLoss.on_step`)."""

    loss_fn: HashingLoss

    def make_loss(self, n_classes: int, n_train: int) -> nn.Module:
        opts: Any = self.cfg.options
        kw = dict(opts.loss_options)
        if opts.memory_bank and self.cfg.method in MEMORY_BANK:
            kw["n_samples"] = n_train
        if self.cfg.method == "csq":
            kw.setdefault("seed", self.cfg.seed)
        return get_hashing_loss(self.cfg.method, opts.bits, n_classes, **kw)

    def loss(self, u: Tensor, it: Tensor) -> Tensor:
        return self.loss_fn(u, self.y[it], it)

    def after_step(self, step: int) -> None:
        self.loss_fn.on_step(step)
        super().after_step(step)


class MetricHead(SupervisedHead):
    """Float embeddings: a pytorch-metric-learning loss, with an optional miner; with
    ``head="residual"`` a head that starts as the identity / PCA of the centred features
    (:mod:`cbir.heads.residual`), and with ``distill > 0`` the distillation of the frozen
    similarities of each batch (:mod:`cbir.losses.metric.distill`)."""

    def standardise(self) -> bool:
        return self.cfg.options.head == "mlp"  # type: ignore[attr-defined]

    @property
    def head_width(self) -> int:
        """The head's output dimension: ``--dim``, or the features' (``--reduce collection``)."""
        opts: Any = self.cfg.options
        return self.x.shape[1] if self.reduces else int(opts.dim)

    def make_head(self) -> nn.Module:
        opts: Any = self.cfg.options
        if opts.reduce not in REDUCES:
            raise CbirError(f"unknown --reduce {opts.reduce!r}; use {' or '.join(REDUCES)}")
        if self.reduces and (
            opts.head != "residual" or opts.head_init != "identity" or opts.center != "collection"
        ):
            raise CbirError(
                "--reduce collection trains a residual head in the feature space from the"
                " identity and projects its outputs on the collection's principal axes: it"
                " needs --head residual --head-init identity --center collection; or use"
                " --reduce head"
            )
        if self.reduces and opts.dim > self.x.shape[1]:
            raise CbirError(
                f"--reduce collection: --dim is at most the feature dimension {self.x.shape[1]}"
            )
        if opts.head == "mlp":
            return super().make_head()
        if opts.head != "residual":
            raise CbirError(f"unknown --head {opts.head!r}; use {' or '.join(HEADS)}")
        head = ResidualHead(
            self.x.shape[1], self.head_width, self.cfg.hidden, self.cfg.dropout, self.cfg.batchnorm
        )
        head.initialise(opts.head_init, self.x)
        return head

    def make_loss(self, n_classes: int, n_train: int) -> nn.Module:
        opts: Any = self.cfg.options
        if opts.center not in CENTERS:
            raise CbirError(f"unknown --center {opts.center!r}; use {' or '.join(CENTERS)}")
        if opts.center == "collection" and opts.head != "residual":
            raise CbirError(
                "--center collection re-centres a residual head's inputs; use --head residual"
                " or --center train"
            )
        if opts.spectral and opts.center != "collection":
            raise CbirError(
                "--spectral weights the outputs by the collection they embed; it needs"
                " --center collection (and --head residual), or --spectral 0"
            )
        return get_metric_loss(self.cfg.method, self.head_width, n_classes, **opts.loss_options)

    def make_miner(self) -> Any:
        miner = self.cfg.options.miner  # type: ignore[attr-defined]
        return get_miner(miner) if miner else None

    def loss(self, u: Tensor, it: Tensor) -> Tensor:
        y = self.y[it]
        loss = self.loss_fn(u, y, None if self.miner is None else self.miner(u, y))
        weight = float(self.cfg.options.distill)  # type: ignore[attr-defined]
        if weight > 0:  # the frozen (centred) features of the batch: x * std
            frozen = self.x[it] * self._std_t
            loss = loss + SimilarityDistillation(weight)(u, frozen)
        return loss

    @property
    def _std_t(self) -> Tensor:
        return torch.from_numpy(np.asarray(self.std, np.float32))


class _SupervisedMethod(Method):
    model: type[SupervisedHead]

    def fit(self, cfg: TrainConfig, data: Any, show: bool) -> tuple[Model, list[dict[str, Any]]]:
        model = self.model(cfg, data, show)
        return model, train_epochs(cfg, model, show)


class HashingMethod(_SupervisedMethod):
    """Deep hashing: DSH, DPSH, HashNet, DCH, CSQ, triplet-tanh, DLBHC."""

    name = "hashing"
    options = HashingOptions
    model = HashingHead

    def names(self) -> tuple[str, ...]:
        return tuple(HASHING_LOSSES)


class MetricMethod(_SupervisedMethod):
    """Metric learning with the losses of :mod:`cbir.losses.metric`."""

    name = "metric"
    options = MetricOptions
    model = MetricHead

    def names(self) -> tuple[str, ...]:
        return tuple(METRIC_LOSSES)

"""The one training loop: epochs, batches, learning-rate schedule, progress, the rows of
``metrics.jsonl`` and evaluation every ``eval_every`` epochs.

What is trained varies by method (:mod:`cbir.train.methods`): each method builds a
:class:`Trainable` (its model and loss, its batches, its per-step hook) and hands it to
:func:`train_epochs`.
"""

from __future__ import annotations

import math
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from cbir.errors import CbirError
from cbir.train.config import TrainConfig


def set_seed(seed: int) -> None:
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(params: list[Any], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The run's optimiser over ``params`` (tensors or parameter groups)."""
    name = cfg.optimizer.lower()
    if name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay, nesterov=True
        )
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise CbirError(f"unknown optimizer {cfg.optimizer!r}; use adam, adamw, sgd or rmsprop")


def epoch_row(
    epoch: int, loss: float, opt: torch.optim.Optimizer, started: float, **extra: float
) -> dict[str, Any]:
    """One line of ``metrics.jsonl``: the epoch's mean loss, its other means, lr, seconds."""
    return {
        "epoch": epoch,
        "loss": loss,
        **extra,
        "lr": opt.param_groups[0]["lr"],
        "seconds": round(time.perf_counter() - started, 3),
    }


def eval_due(cfg: TrainConfig, epoch: int) -> bool:
    """Whether the run evaluates after ``epoch`` (every ``eval_every`` epochs and the last)."""
    return bool(cfg.eval_every) and (epoch % cfg.eval_every == 0 or epoch == cfg.epochs)


def lr_factor(schedule: str, step: int, total: int, warmup: int) -> float:
    """Multiplier of the base learning rate at optimisation ``step`` (0-based)."""
    s = step + 1
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        w = min(warmup, max(total // 10, 1))
        if s <= w:
            return s / w
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (s - w) / max(1, total - w))))
    if schedule == "warmup-invsqrt":
        w = max(1, warmup)
        return min(s / w, math.sqrt(w / s))
    raise CbirError(f"unknown schedule {schedule!r}; use constant, cosine or warmup-invsqrt")


def batches(order: np.ndarray, batch_size: int) -> Iterable[np.ndarray]:
    """Full batches of a permutation (the last partial batch is dropped, as usual)."""
    for i in range(0, len(order) - batch_size + 1, batch_size):
        yield order[i : i + batch_size]
    if len(order) < batch_size:
        yield order


class Model(ABC):
    """A trained model as the run directory stores it.

    Attributes:
        data: the data it was trained on (and the final evaluation uses).
        report: fields of final.json beyond the common ones (e.g. feedback pairs used).
    """

    data: Any = None

    @property
    def report(self) -> dict[str, Any]:
        return {}

    @abstractmethod
    def checkpoint(self, extra: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint of the current weights (modules in eval mode), with ``extra``."""

    def finish(self, run: Path) -> Any:
        """After training, files of the run beyond the checkpoint; returns the data the
        final evaluation uses."""
        return self.data


class Trainable(Model):
    """A model :func:`train_epochs` trains: a subclass per family supplies its parameters,
    batches, forward step and evaluation, and optionally the hooks.

    Attributes:
        steps_per_epoch: optimisation steps in one epoch (for the schedule).
    """

    steps_per_epoch: int = 1

    @abstractmethod
    def param_groups(self) -> list[Any]:
        """The parameters (or parameter groups) the optimiser updates."""

    def train_mode(self) -> None:
        """Switch the modules to training mode (start of every epoch)."""

    @abstractmethod
    def batches(self, epoch: int) -> Iterable[Any]:
        """The batches of one epoch (1-based)."""

    @abstractmethod
    def step(self, batch: Any) -> tuple[Tensor, float, dict[str, float]]:
        """Forward one batch: (loss, its weight in the epoch mean, other per-batch means)."""

    def after_step(self, step: int) -> None:
        """Per-step hook after the optimiser step (``step``: steps taken so far)."""

    def end_epoch(self) -> None:
        """Hook at the end of an epoch, before evaluation."""

    @abstractmethod
    def evaluate(self, limit: int | None) -> dict[str, Any]:
        """The ``eval`` figures of a row of ``metrics.jsonl`` (query subset of ``limit``)."""


def train_epochs(cfg: TrainConfig, model: Trainable, show: bool) -> list[dict[str, Any]]:
    """Train ``model`` for ``cfg.epochs`` epochs; returns the rows of ``metrics.jsonl``."""
    opt = make_optimizer(model.param_groups(), cfg)
    total = model.steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(cfg.schedule, s, total, cfg.warmup)
    )
    rows: list[dict[str, Any]] = []
    step = 0
    for epoch in range(1, cfg.epochs + 1):
        model.train_mode()
        started = time.perf_counter()
        sums: dict[str, float] = {"loss": 0.0}
        count = 0.0
        desc = f"epoch {epoch}/{cfg.epochs}"
        bar = None
        if show:
            bar = tqdm(
                total=model.steps_per_epoch, desc=desc, unit="batch", leave=False, file=sys.stderr
            )
        for batch in model.batches(epoch):
            loss, weight, values = model.step(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            model.after_step(step)
            sums["loss"] += loss.item() * weight
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v * weight
            count += weight
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{v / max(count, 1):.4f}" for k, v in sums.items()})
        if bar is not None:
            bar.close()
        model.end_epoch()
        n = max(count, 1)
        means = {k: v / n for k, v in sums.items()}
        row = epoch_row(epoch, means.pop("loss"), opt, started, **means)
        if eval_due(cfg, epoch):
            row["eval"] = model.evaluate(cfg.eval_queries)
        rows.append(row)
        if show:
            figs = " ".join(f"{k} {row[k]:.4f}" for k in ("loss", *means))
            ev = " ".join(f"{k}={v}" for k, v in row.get("eval", {}).items())
            print(f"epoch {epoch}: {figs} {ev}", file=sys.stderr)
    return rows

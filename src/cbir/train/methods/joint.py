"""A joint image-text space: VSE++ (Faghri et al., "VSE++: Improving Visual-Semantic
Embeddings with Hard Negatives", BMVC 2018) and VSE0 (the plain sum of hinges).

Two heads (:class:`cbir.heads.vsepp.JointEmbedding`) on standardised backbone features
and sentence embeddings. One epoch visits every training image once, paired with a
random caption of its group; data and figures: :mod:`cbir.train.joint`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cbir.errors import CbirError
from cbir.heads.learned import LearnedTransform
from cbir.heads.vsepp import JointEmbedding
from cbir.losses.vsepp import VSELoss, vse_loss
from cbir.train.config import JointOptions, TrainConfig
from cbir.train.joint import JointData, evaluate_joint, load_joint_data
from cbir.train.loop import Model, Trainable, train_epochs
from cbir.train.methods.base import Method
from cbir.train.runs import make_checkpoint

JOINT_METHODS = ("vsepp", "vse0")


def _standardise(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return a.mean(0), a.std(0) + 1e-6


def joint_loss(cfg: TrainConfig) -> VSELoss:
    """The run's VSE loss (``--loss-option``: margin, max_violation, reduction)."""
    try:
        return vse_loss(cfg.method, **cfg.options.loss_options)  # type: ignore[attr-defined]
    except TypeError as e:
        raise CbirError(
            f"--loss-option for {cfg.method}: {e} (known: margin, max_violation, reduction)"
        ) from None


class JointModel(Trainable):
    """The image and text heads, and one caption drawn per training image each epoch."""

    def __init__(self, cfg: TrainConfig, data: JointData) -> None:
        opts: Any = cfg.options
        self.cfg, self.data = cfg, data
        self.loss_fn = self.make_loss(cfg)
        x_np = np.ascontiguousarray(data.images, np.float32)
        t_np = np.ascontiguousarray(data.texts, np.float32)
        self.x_mean, self.x_std = _standardise(x_np)
        self.t_mean, self.t_std = _standardise(t_np)
        self.x = torch.from_numpy((x_np - self.x_mean) / self.x_std)
        self.t = torch.from_numpy((t_np - self.t_mean) / self.t_std)
        self.groups = torch.from_numpy(np.asarray(data.image_groups, np.int64))
        # captions of each group, for drawing one positive caption per image
        self.order = np.argsort(data.text_groups, kind="stable")
        uniq, self.starts, self.counts = np.unique(
            data.text_groups[self.order], return_index=True, return_counts=True
        )
        where = {int(g): i for i, g in enumerate(uniq)}
        try:
            self.slot = np.asarray([where[int(g)] for g in data.image_groups], np.int64)
        except KeyError as e:
            raise CbirError(f"training image group {e} has no caption") from None
        self.model = JointEmbedding(
            self.x.shape[1],
            self.t.shape[1],
            opts.width,  # VSE++: dim; DCMH: bits
            cfg.hidden,
            opts.text_hidden,
            cfg.dropout,
            cfg.batchnorm,
        )
        self.n = len(self.x)
        self.bs = min(cfg.batch_size, self.n)
        self.steps_per_epoch = max(1, self.n // self.bs)
        self.gen = np.random.default_rng(cfg.seed)

    def make_loss(self, cfg: TrainConfig) -> Any:
        """The loss of :meth:`step` (a subclass may train the heads with another)."""
        return joint_loss(cfg)

    def param_groups(self) -> list[Any]:
        return list(self.model.parameters())

    def train_mode(self) -> None:
        self.model.train()

    def batches(self, epoch: int) -> Iterable[Any]:
        n, slot = self.n, self.slot
        perm = self.gen.permutation(n)
        draw = self.starts[slot] + (self.gen.random(n) * self.counts[slot]).astype(np.int64)
        cap = self.order[draw]  # a caption per image
        for b in range(self.steps_per_epoch):
            idx = perm[b * self.bs : (b + 1) * self.bs]
            yield idx, cap[idx]

    def step(self, batch: Any) -> tuple[Tensor, float, dict[str, float]]:
        idx, cap = batch
        u = self.model.embed_images(self.x[torch.from_numpy(idx)])
        v = self.model.embed_text(self.t[torch.from_numpy(cap)])
        return self.loss_fn(u, v, self.groups[torch.from_numpy(idx)]), 1, {}

    def evaluate(self, limit: int | None) -> dict[str, Any]:
        m = evaluate_joint(LearnedTransform(self.checkpoint({})), self.data, limit=limit)
        out: dict[str, Any] = {k: round(v, 5) for k, v in m.items()}
        out["recall@1"] = out["t2i_recall@1"]  # the curve loss.png draws
        return out

    def checkpoint(self, extra: dict[str, Any]) -> dict[str, Any]:
        self.model.eval()
        t = lambda a: torch.from_numpy(np.asarray(a, np.float32))  # noqa: E731
        text = self.model.text
        return make_checkpoint(
            self.cfg,
            self.model.image,
            self.x_mean,
            self.x_std,
            self.data.fingerprint,
            {
                "text_head": text.config,
                "text_state": {k: v.detach().clone() for k, v in text.state_dict().items()},
                "text_input": {"mean": t(self.t_mean), "std": t(self.t_std)},
                "text_encoder": dict(self.data.text_fingerprint),
                **extra,
            },
        )


class JointMethod(Method):
    """Joint image-text spaces trained on (image, caption) pairs."""

    name = "joint"
    options = JointOptions
    tsne = False

    def names(self) -> tuple[str, ...]:
        return JOINT_METHODS

    def prepare(self, cfg: TrainConfig) -> None:
        joint_loss(cfg)

    def accepts(self, data: Any) -> bool:
        return isinstance(data, JointData)

    def load_data(self, cfg: TrainConfig, progress: bool | None = None) -> JointData:
        return load_joint_data(cfg, progress=progress)

    def fit(self, cfg: TrainConfig, data: Any, show: bool) -> tuple[Model, list[dict[str, Any]]]:
        model = JointModel(cfg, data)
        return model, train_epochs(cfg, model, show)

    def data_name(self, data: Any) -> str:
        return data.name

    def summary(self, data: Any, model: Model) -> dict[str, Any]:
        return {
            "n_train": len(data.images),
            "n_train_captions": len(data.texts),
            "level": data.level,
        }

    def final_eval(self, run: Path, data: Any, show: bool) -> dict[str, Any]:
        t1 = time.perf_counter()
        metrics = evaluate_joint(LearnedTransform.from_path(run), data)
        return {
            "metrics": metrics,
            "eval_seconds": round(time.perf_counter() - t1, 2),
            "n_test_images": len(data.test_images),
            "n_test_captions": len(data.test_texts),
        }

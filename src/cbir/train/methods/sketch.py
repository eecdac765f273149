"""Sketch queries (after Liu et al., "Deep Sketch Hashing: Fast Free-hand Sketch-Based
Image Retrieval", CVPR 2017): ``cbir train --method sketch``.

The training pairs come from the images themselves: each training image's drawings
(:func:`cbir.data.sketch.edge_sketch`, ``sketches`` seeds per image) run through the same
frozen backbone as the images; a small head (:class:`cbir.heads.head.Head`) maps a
drawing's features to a direction in the image features' centred space, trained with
:func:`cbir.losses.sketch.sketch_loss` towards its own image and its class. The run
writes ``sketch.npz`` (:class:`cbir.heads.sketch.SketchModel`), which ``cbir search INDEX
--sketch DRAWING --model RUN`` and ``cbir serve --sketch-model RUN`` use against any index
of the same backbone.

Figures: drawings of the query split's images (a seed no training drawing uses) search
the database split's *images* through the frozen centred transform (category mAP); the
baseline is the frozen backbone on the same drawings, without the head.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cbir.backbones.cache import dataset_features
from cbir.backbones.registry import open_backbone
from cbir.data.sketch import SketchStyle, sketch_set
from cbir.errors import CbirError
from cbir.eval.run import evaluate_features
from cbir.heads.base import l2_normalize
from cbir.heads.frozen import FrozenTransform
from cbir.heads.head import Head
from cbir.heads.sketch import SKETCH_FILE, SketchModel, sketch_arrays, write_sketch_model
from cbir.losses.sketch import check_options, sketch_loss
from cbir.train.config import SketchOptions, TrainConfig
from cbir.train.data import run_splits, split_info
from cbir.train.loop import Model, Trainable, train_epochs
from cbir.train.methods.base import Method
from cbir.train.runs import make_checkpoint

#: Seed of the query drawings (no training drawing uses it: those take 0..sketches-1).
QUERY_SEED = 1000


@dataclass
class SketchData:
    """Backbone features of the training images and their drawings, of the query
    split's drawings and of the database split's images."""

    images: np.ndarray  # (n, d) training images
    sketches: np.ndarray  # (S, n, d) their drawings, one block per seed
    labels: np.ndarray
    query: np.ndarray  # drawings of the query images
    query_labels: np.ndarray
    database: np.ndarray  # images searched
    database_labels: np.ndarray
    protocol: Any
    fingerprint: dict[str, Any]
    style: SketchStyle
    split: dict[str, Any] | None = None


def load_sketch_data(cfg: TrainConfig, progress: bool | None = None) -> SketchData:
    """Features (cached) of the protocol's images and of their drawings."""
    opts: Any = cfg.options
    proto, _ds, train, query, database = run_splits(cfg)
    if train.multilabel or query.multilabel:
        raise CbirError(f"{cfg.dataset}: sketch queries need one class per image, not tags")
    size = cfg.size or proto.size
    style = SketchStyle()
    feats = lambda s: np.asarray(dataset_features(s, size=size, progress=progress))  # noqa: E731
    x = feats(train)
    sk = np.stack([feats(sketch_set(train, seed, style)) for seed in range(opts.sketches)])
    q = feats(sketch_set(query, QUERY_SEED, style))
    db_set = database if database is not None else query
    return SketchData(
        images=x,
        sketches=sk,
        labels=np.asarray(train.labels),
        query=q,
        query_labels=np.asarray(query.labels),
        database=feats(db_set),
        database_labels=np.asarray(db_set.labels),
        protocol=proto,
        fingerprint=open_backbone(size=size).fingerprint,
        style=style,
        split=split_info(proto, train, query, database),
    )


def sketch_map(queries: np.ndarray, data: SketchData, limit: int | None = None) -> dict[str, Any]:
    """Figures of (predicted) image features of drawings searching the database images
    through the frozen centred transform (what a default ``cbir index`` holds)."""
    q, ql = queries, data.query_labels
    if limit and limit < len(q):
        idx = np.random.default_rng(0).choice(len(q), limit, replace=False)
        q, ql = q[idx], ql[idx]
    m = evaluate_features(
        FrozenTransform(dim=data.database.shape[1], center=True),
        q,
        ql,
        data.database,
        data.database_labels,
        data.protocol,
        nmi=False,
    )
    return {k: v for k, v in m.items() if k != "curves"}


class SketchTrainable(Trainable):
    """The sketch head and its batches: every drawing once per epoch, with its image."""

    def __init__(self, cfg: TrainConfig, data: SketchData) -> None:
        opts: Any = cfg.options
        self.cfg, self.data = cfg, data
        self.loss_options = check_options(**opts.loss_options)
        x = np.asarray(data.images, np.float64)
        self.target_mean = x.mean(0)
        centred = x - self.target_mean
        self.radius = float(np.median(np.linalg.norm(centred, axis=1)))
        self.targets = torch.from_numpy(l2_normalize(centred.astype(np.float32)))
        s = np.asarray(data.sketches, np.float32).reshape(-1, data.sketches.shape[-1])
        self.in_mean, self.in_std = s.mean(0), s.std(0) + 1e-6
        self.inputs = torch.from_numpy((s - self.in_mean) / self.in_std)
        self.labels = torch.from_numpy(np.asarray(data.labels, np.int64))
        d = data.images.shape[1]
        self.head = Head(d, d, cfg.hidden, cfg.dropout, batchnorm=False)
        self.n_images = len(x)
        self.n = len(s)
        self.bs = min(cfg.batch_size, self.n)
        self.steps_per_epoch = max(1, self.n // self.bs)
        self.gen = np.random.default_rng(cfg.seed)

    def param_groups(self) -> list[Any]:
        return list(self.head.parameters())

    def train_mode(self) -> None:
        self.head.train()

    def batches(self, epoch: int) -> Iterable[Any]:
        perm = self.gen.permutation(self.n)
        for b in range(self.steps_per_epoch):
            yield perm[b * self.bs : (b + 1) * self.bs]

    def step(self, batch: Any) -> tuple[Tensor, float, dict[str, float]]:
        idx = torch.from_numpy(batch)
        img = idx % self.n_images
        s = torch.nn.functional.normalize(self.head(self.inputs[idx]), dim=1)
        loss, parts = sketch_loss(s, self.targets[img], self.labels[img], **self.loss_options)
        return loss, 1, parts

    def arrays(self) -> dict[str, np.ndarray]:
        """The current weights as a sketch model's arrays (:func:`sketch_arrays`)."""
        self.head.eval()
        layers = [
            (m.weight.detach().numpy().copy(), m.bias.detach().numpy().copy())
            for m in self.head.net
            if isinstance(m, torch.nn.Linear)
        ]
        return sketch_arrays(
            layers, self.in_mean, self.in_std, self.target_mean, self.radius, self.meta()
        )

    def meta(self) -> dict[str, Any]:
        return {
            "method": self.cfg.method,
            "backbone": dict(self.data.fingerprint),
            "style": self.data.style.to_dict(),
            "sketches": int(self.data.sketches.shape[0]),
        }

    def evaluate(self, limit: int | None) -> dict[str, Any]:
        m = sketch_map(SketchModel(self.arrays())(self.data.query), self.data, limit)
        return {"map": round(float(m["map"]), 5), "p@10": round(float(m["p@10"]), 5)}

    def checkpoint(self, extra: dict[str, Any]) -> dict[str, Any]:
        self.head.eval()
        return make_checkpoint(
            self.cfg,
            self.head,
            self.in_mean,
            self.in_std,
            self.data.fingerprint,
            {"sketch": self.meta(), **extra},
        )

    def finish(self, run: Path) -> Any:
        write_sketch_model(run / SKETCH_FILE, self.arrays())
        return self.data


class SketchMethod(Method):
    """A sketch branch trained on drawings made from the training images."""

    name = "sketch"
    options = SketchOptions
    tsne = False

    def names(self) -> tuple[str, ...]:
        return ("sketch",)

    def prepare(self, cfg: TrainConfig) -> None:
        opts: Any = cfg.options
        try:
            check_options(**opts.loss_options)
        except (TypeError, ValueError) as e:
            raise CbirError(
                f"--loss-option for sketch: {e} (known: temperature, instance)"
            ) from None
        if opts.sketches < 1:
            raise CbirError(f"sketches must be at least 1, got {opts.sketches}")

    def accepts(self, data: Any) -> bool:
        return isinstance(data, SketchData)

    def load_data(self, cfg: TrainConfig, progress: bool | None = None) -> SketchData:
        return load_sketch_data(cfg, progress=progress)

    def fit(self, cfg: TrainConfig, data: Any, show: bool) -> tuple[Model, list[dict[str, Any]]]:
        model = SketchTrainable(cfg, data)
        return model, train_epochs(cfg, model, show)

    def summary(self, data: Any, model: Model) -> dict[str, Any]:
        return {
            "n_train": len(data.images),
            "n_train_sketches": int(data.sketches.shape[0] * len(data.images)),
        }

    def final_eval(self, run: Path, data: Any, show: bool) -> dict[str, Any]:
        t1 = time.perf_counter()
        model = SketchModel.from_path(run)
        metrics = sketch_map(model(data.query), data)
        baseline = sketch_map(data.query, data)
        return {
            "metrics": metrics,
            "baseline": {k: baseline[k] for k in ("map", "p@10") if k in baseline},
            "eval_seconds": round(time.perf_counter() - t1, 2),
            "n_queries": len(data.query),
            "n_database": len(data.database),
        }

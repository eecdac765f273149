"""The data of a run: cached backbone features of the protocol's splits, and evaluation
of a transform on them (:mod:`cbir.eval`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cbir.backbones.cache import dataset_features
from cbir.backbones.registry import open_backbone
from cbir.errors import CbirError
from cbir.eval.protocols import DEFAULT_SPLIT, Splits, is_unsplit, resolve, split_line, with_split
from cbir.eval.run import evaluate_features
from cbir.train.config import TrainConfig


@dataclass
class TrainData:
    """Backbone features and labels of the protocol's splits."""

    x: np.ndarray
    y: np.ndarray
    n_classes: int
    query: np.ndarray
    query_labels: np.ndarray
    database: np.ndarray | None
    database_labels: np.ndarray | None
    protocol: Any
    fingerprint: dict[str, Any]
    class_names: list[str] | None = None
    split: dict[str, Any] | None = None  # the split line, sizes and any warning (final.json)


def run_splits(cfg: TrainConfig) -> tuple[Any, Any, Any, Any, Any]:
    """``(protocol, dataset, train, query, database)`` image sets of a run (with the
    ``*_limit`` subsets drawn from ``cfg.seed``); no features computed."""
    if cfg.eval_on_train and cfg.split:
        raise CbirError(
            f"--eval-on-train evaluates on the training images; drop --split {cfg.split}"
        )
    proto, ds, splits = resolve(
        cfg.dataset, cfg.protocol, cfg.seed, split=cfg.split, train_fraction=cfg.train_fraction
    )
    if cfg.split is None and not cfg.eval_on_train and is_unsplit(proto, ds):
        proto, splits = with_split(
            proto, ds, DEFAULT_SPLIT, cfg.seed, cfg.train_fraction, cfg.dataset
        )
    if splits.train is None or len(splits.train) == 0:
        raise CbirError(f"protocol {proto.name} has no training split")

    def limit(images, n: int | None, tag: str):
        if not n or n >= len(images):
            return images
        idx = np.sort(
            np.random.default_rng([cfg.seed, len(tag)]).choice(len(images), n, replace=False)
        )
        return images.subset(idx, f"{images.name}-{tag}{n}-s{cfg.seed}")

    train, query, database = splits.train, splits.query, splits.database
    if cfg.holdout:  # a validation protocol for choices: never the test queries
        if not 0 < cfg.holdout < len(train):
            raise CbirError(
                f"--holdout must be between 1 and {len(train) - 1} (training images), got {cfg.holdout}"
            )
        perm = np.random.default_rng([cfg.seed, 99]).permutation(len(train))
        tag = f"{train.name}-holdout{cfg.holdout}-s{cfg.seed}"
        query = train.subset(np.sort(perm[: cfg.holdout]), f"{tag}-val")
        train = database = train.subset(np.sort(perm[cfg.holdout :]), f"{tag}-train")
    train = limit(train, cfg.train_limit, "t")
    query = limit(query, cfg.query_limit, "q")
    database = None if database is None else limit(database, cfg.database_limit, "d")
    n = 0 if cfg.eval_on_train else Splits(train, query, database).overlap()
    if n:
        raise CbirError(
            f"{cfg.dataset}: {n} of the {len(query)} query images are training images, so the"
            " figures would score the model on what it learned; split the folder (--split"
            " same-classes or zero-shot) or pass --eval-on-train to evaluate on them anyway"
        )
    return proto, ds, train, query, database


def split_info(proto: Any, train: Any, query: Any, database: Any) -> dict[str, Any]:
    """What a run trains and evaluates on: the split line, its sizes, and a warning when
    query images are training images (``--eval-on-train``)."""
    splits = Splits(train, query, database)
    n = splits.overlap()
    warning = (
        f"evaluated on its own training images ({n} of the {len(query)} queries were trained"
        " on, --eval-on-train): the figures overstate what the model does on new images"
        if n
        else None
    )
    return {
        "name": proto.name,
        "line": split_line(proto, splits),
        "sizes": splits.sizes(),
        "overlap": n,
        "warning": warning,
    }


def load_data(cfg: TrainConfig, progress: bool | None = None) -> TrainData:
    """Features (cached) of the training, query and database splits of the protocol."""
    proto, ds, train, query, database = run_splits(cfg)
    size = cfg.size or proto.size
    feats = lambda s: np.asarray(dataset_features(s, size=size, progress=progress))  # noqa: E731
    x = feats(train)
    q = feats(query)
    db = None if database is None else feats(database)
    y = train.labels
    n_classes = int(y.shape[1]) if y.ndim == 2 else int(y.max()) + 1
    return TrainData(
        x=x,
        y=y,
        n_classes=n_classes,
        query=q,
        query_labels=query.labels,
        database=db,
        database_labels=None if database is None else database.labels,
        protocol=proto,
        fingerprint=open_backbone(size=size).fingerprint,
        class_names=list(ds.class_names) or None,
        split=split_info(proto, train, query, database),
    )


def evaluate_transform(
    transform: Any, data: TrainData, limit: int | None = None, progress: bool | None = False
) -> dict[str, Any]:
    """Metrics of ``transform`` on the protocol (``limit``: first queries only, for speed)."""
    q, ql = data.query, data.query_labels
    if limit and limit < len(q):
        idx = np.random.default_rng(0).choice(len(q), limit, replace=False)
        q, ql = q[idx], ql[idx]
    return evaluate_features(
        transform,
        q,
        ql,
        data.database,
        data.database_labels,
        data.protocol,
        progress=progress,
        nmi=limit is None,
    )

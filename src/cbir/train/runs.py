"""A run directory (``RUN_DIR``)::

config.json     the full configuration (reproducible: same seed, same result)
metrics.jsonl   one JSON line per epoch (loss, lr, seconds, and evaluation figures)
model.pt        the checkpoint (head, input statistics, backbone fingerprint)
loss.png        the loss curve (and mAP / Recall@1 where evaluated)
tsne.png        t-SNE map of the query embedding by class (tsne.json: its subset)
final.json      the final metrics on the full protocol (cbir.eval)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cbir.heads.learned import FORMAT
from cbir.train.config import TrainConfig
from cbir.utils import atomic_write, atomic_write_json

CONFIG = "config.json"
METRICS = "metrics.jsonl"
FINAL = "final.json"


def make_checkpoint(
    cfg: TrainConfig,
    head: nn.Module,
    mean: np.ndarray,
    std: np.ndarray,
    fingerprint: dict[str, Any],
    extra: dict[str, Any],
    center: str = "train",
    spectral: float = 0.0,
    reduce: int | None = None,
) -> dict[str, Any]:
    """The checkpoint of a trained head (read back by :class:`cbir.heads.learned.LearnedTransform`).

    ``center``: "train" (inputs centred on ``mean``) or "collection" (on the mean of the
    collection the head embeds, fitted at index / evaluation time). ``spectral``: the
    power of the collection's spectral weighting of the outputs, fitted with that mean
    (0: none; :func:`cbir.heads.base.spectral_weighting`). ``reduce``: the embedding
    dimension when the head's outputs are reduced on the collection's principal axes
    (``--reduce collection``; None: the head's own output dimension).
    """
    return {
        "format": FORMAT,
        "method": cfg.method,
        "kind": cfg.kind(),
        "head": head.config,
        "state": {k: v.detach().clone() for k, v in head.state_dict().items()},
        "input": {
            "mean": torch.from_numpy(np.asarray(mean, np.float32)),
            "std": torch.from_numpy(np.asarray(std, np.float32)),
            **({"center": center} if center != "train" else {}),
            **({"spectral": float(spectral)} if spectral else {}),
            **({"reduce": int(reduce)} if reduce else {}),
        },
        "backbone": fingerprint,
        "config": json.loads(json.dumps(cfg.to_dict())),
        **extra,
    }


def write_config(run: Path, cfg: TrainConfig) -> None:
    atomic_write_json(run / CONFIG, cfg.to_dict())


def write_metrics(run: Path, rows: list[dict[str, Any]]) -> None:
    lines = "".join(json.dumps(r) + "\n" for r in rows)
    atomic_write(run / METRICS, lambda f: f.write(lines.encode()))


def write_final(run: Path, result: dict[str, Any]) -> None:
    atomic_write_json(run / FINAL, result)

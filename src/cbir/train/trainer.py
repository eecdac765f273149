"""One trainer for every learned head: deep hashing, metric learning, unsupervised codes,
sparse codes and joint image-text spaces.

The default trains a small head (:class:`cbir.heads.head.Head`) on cached backbone
features of the protocol's training split (computed once, memory-mapped), which takes
seconds to minutes on a CPU. The method's family (:mod:`cbir.train.registry`) supplies
the data, the model and its loss; the epochs run in :func:`cbir.train.loop.train_epochs`;
the run directory is described in :mod:`cbir.train.runs`.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from cbir.codes.registry import code_kind
from cbir.errors import CbirError
from cbir.heads.learned import CHECKPOINT, LearnedTransform, save_checkpoint
from cbir.train.config import TrainConfig
from cbir.train.data import TrainData, evaluate_transform, load_data, run_splits
from cbir.train.loop import set_seed
from cbir.train.plots import plot_curves, write_tsne
from cbir.train.registry import all_methods, get_method, make_config
from cbir.train.runs import write_config, write_final, write_metrics

__all__ = [
    "TrainConfig",
    "TrainData",
    "all_methods",
    "evaluate_transform",
    "load_data",
    "make_config",
    "run_splits",
    "train",
]


def train(
    cfg: TrainConfig,
    out: str | os.PathLike[str],
    progress: bool | None = None,
    data: Any = None,
    final_eval: bool = True,
) -> dict[str, Any]:
    """Train one model into ``out`` (a run directory); returns the final metrics.

    ``data``: the method's training data, loaded once for several runs (see
    :meth:`~cbir.train.methods.base.Method.load_data`); other data is ignored.
    """
    method = get_method(cfg.method)
    if not isinstance(cfg.options, method.options):
        raise CbirError(
            f"{cfg.method} takes {method.options.__name__}, not {type(cfg.options).__name__};"
            " build the configuration with cbir.train.registry.make_config"
        )
    show = sys.stderr.isatty() if progress is None else progress
    run = Path(out)
    run.mkdir(parents=True, exist_ok=True)
    write_config(run, cfg)
    if data is None or not method.accepts(data):
        data = method.load_data(cfg, progress=show)
    method.prepare(cfg)
    set_seed(cfg.seed)
    t0 = time.perf_counter()
    model, rows = method.fit(cfg, data, show)
    seconds = time.perf_counter() - t0
    data = model.finish(run)  # a fine-tuned backbone: its file, features and fingerprint
    ckpt = model.checkpoint({"train_seconds": seconds})
    save_checkpoint(run / CHECKPOINT, ckpt)
    write_metrics(run, rows)
    name = method.data_name(data)
    title = f"{cfg.method}, {cfg.options.describe()}, {name}"
    plot_curves(run / "loss.png", rows, title)
    if method.tsne and cfg.tsne_points:  # binary codes: the real outputs
        write_tsne(
            run,
            LearnedTransform(ckpt),
            data.query,
            data.query_labels,
            f"{title}: query embedding (t-SNE)",
            cfg.tsne_points,
            cfg.seed,
            names=data.class_names,
        )
    result: dict[str, Any] = {
        "protocol": name,
        "model": str(run),
        "method": cfg.method,
        code_kind(cfg.kind()).width_option: cfg.options.width,
        "train_seconds": round(seconds, 2),
        **method.summary(data, model),
    }
    split = getattr(data, "split", None)
    if split:  # what the figures are measured on; a warning if on training images
        result["split"] = split
        if split.get("warning"):
            result["warning"] = split["warning"]
    if final_eval:
        result.update(method.final_eval(run, data, show))
    write_final(run, result)
    return result

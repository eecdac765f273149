"""Training of the sparse-code encoders (``cbir train --method sparse-topk|sparse-l1``).

See :mod:`cbir.heads.sparse` for the models. Options (``--loss-option KEY=VALUE``):

- ``k``: active units per code (sparse-topk: required, default 32; sparse-l1: optional cap).
- ``l1``: weight of the L1 penalty, on the mean L1 norm of the codes (sparse-l1; default
  0.005).
- ``supervised``: weight of the label term (normalised softmax on the codes; default 0:
  unsupervised); ``temperature``: its temperature (default 0.05).

The loss is ``mse(decoder(code), x) [+ l1 * mean|code|] [+ supervised * NormSoftmax]``
on standardised features, with Adam and the trainer's schedule; decoder atoms are kept
at unit norm after every step.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cbir.errors import CbirError
from cbir.heads.learned import Head
from cbir.heads.sparse import SparseAutoencoder

OPTIONS = ("k", "l1", "supervised", "temperature")


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


def train_sparse(
    cfg: Any, data: Any, x_np: np.ndarray, rows: list[dict[str, Any]], show: bool
) -> tuple[Head, np.ndarray, np.ndarray, dict[str, Any]]:
    """Train a sparse encoder; returns (encoder head, input mean, input std, checkpoint extras)."""
    from cbir.train.trainer import (
        _bar,
        _batches,
        _checkpoint,
        epoch_row,
        eval_due,
        evaluate_transform,
        lr_factor,
        make_optimizer,
    )

    opts = sparse_options(cfg.method, cfg.loss_options, cfg.dim)
    mean = x_np.mean(0)
    std = x_np.std(0) + 1e-6
    x = torch.from_numpy((x_np - mean) / std)
    n = len(x)
    encoder = Head(x.shape[1], cfg.dim, cfg.hidden, cfg.dropout, cfg.batchnorm)
    model = SparseAutoencoder(encoder, x.shape[1], opts["activation"], opts["k"])
    params = list(model.parameters())
    label_loss = None
    if opts["supervised"] > 0:
        from pytorch_metric_learning.losses import NormalizedSoftmaxLoss

        label_loss = NormalizedSoftmaxLoss(data.n_classes, cfg.dim, temperature=opts["temperature"])
        params += list(label_loss.parameters())
        y = torch.from_numpy(np.asarray(data.y))
    opt = make_optimizer(params, cfg)
    steps_per_epoch = max(1, n // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(cfg.schedule, s, total, cfg.warmup)
    )
    gen = np.random.default_rng(cfg.seed)
    extra = {"sparse": {"activation": opts["activation"], "k": opts["k"]}}
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        t = time.perf_counter()
        sums = {"loss": 0.0, "mse": 0.0, "active": 0.0}
        count = 0
        bar = _bar(steps_per_epoch, f"epoch {epoch}/{cfg.epochs}", show)
        for idx in _batches(gen.permutation(n), cfg.batch_size):
            it = torch.from_numpy(np.asarray(idx, np.int64))
            xb = x[it]
            h, recon = model(xb)
            mse = F.mse_loss(recon, xb)
            loss = mse
            if opts["l1"]:
                loss = loss + opts["l1"] * h.abs().sum(1).mean()
            if label_loss is not None:
                loss = loss + opts["supervised"] * label_loss(h, y[it])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            model.normalise()
            b = len(idx)
            sums["loss"] += loss.item() * b
            sums["mse"] += mse.item() * b
            sums["active"] += float((h > 0).sum(1).float().mean()) * b
            count += b
            if bar is not None:
                bar.update(1)
                bar.set_postfix(
                    loss=f"{sums['loss'] / count:.4f}", active=f"{sums['active'] / count:.1f}"
                )
        if bar is not None:
            bar.close()
        n = max(count, 1)
        row = epoch_row(
            epoch, sums["loss"] / n, opt, t, mse=sums["mse"] / n, active=sums["active"] / n
        )
        if eval_due(cfg, epoch):
            from cbir.heads.learned import LearnedTransform

            encoder.eval()
            tr = LearnedTransform(_checkpoint(cfg, encoder, mean, std, data.fingerprint, extra))
            m = evaluate_transform(tr, data, limit=cfg.eval_queries)
            row["eval"] = {k: round(float(m[k]), 5) for k in ("map", "map@r", "recall@1") if k in m}
            row["eval"]["queries"] = m.get("n_queries")
        rows.append(row)
        if show:
            import sys

            ev = " ".join(f"{k}={v}" for k, v in row.get("eval", {}).items())
            print(
                f"epoch {epoch}: loss {row['loss']:.4f} mse {row['mse']:.4f} active {row['active']:.1f} {ev}",
                file=sys.stderr,
            )
    encoder.eval()
    with torch.no_grad():
        sample = x[: min(n, 4096)]
        h, _ = model(sample)
        active = (h > 0).sum(1).float()
        used = int(((h > 0).sum(0) > 0).sum())
    extra["sparse"]["train_active_mean"] = round(float(active.mean()), 3)
    extra["sparse"]["train_dims_used"] = used
    return encoder, mean, std, extra

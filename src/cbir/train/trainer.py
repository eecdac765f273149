"""One trainer for every learned head: deep hashing, metric learning, unsupervised codes.

The default trains a small head (:class:`cbir.heads.learned.Head`) on cached backbone
features of the protocol's training split (computed once, memory-mapped), which takes
seconds to minutes on a CPU. A run directory holds::

    config.json     the full configuration (reproducible: same seed, same result)
    metrics.jsonl   one JSON line per epoch (loss, lr, seconds, and evaluation figures)
    model.pt        the checkpoint (head, input statistics, backbone fingerprint)
    loss.png        the loss curve (and mAP / Recall@1 where evaluated)
    tsne.png        t-SNE map of the query embedding by class (tsne.json: its subset)
    final.json      the final metrics on the full protocol (cbir.eval)
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cbir.errors import CbirError
from cbir.heads.learned import CHECKPOINT, FORMAT, Head, LearnedTransform, save_checkpoint
from cbir.train.plots import TSNE_POINTS, plot_curves, write_tsne
from cbir.utils import atomic_write, atomic_write_json

HASHING = ("dsh", "dpsh", "hashnet", "dch", "csq", "triplet-tanh", "dlbhc")
UNSUPERVISED = ("lsh", "itq", "autoencoder")
JOINT = ("vsepp", "vse0")  # joint image-text spaces (cbir.train.joint)
SPARSE = ("sparse-topk", "sparse-l1")  # sparse codes for the inverted index (cbir.train.sparse)


def metric_methods() -> tuple[str, ...]:
    """Metric-learning methods (float embeddings), from :mod:`cbir.losses.metric`."""
    try:
        from cbir.losses.metric import METRIC_LOSSES
    except ImportError:
        return ()
    return tuple(METRIC_LOSSES)


def all_methods() -> tuple[str, ...]:
    return HASHING + UNSUPERVISED + metric_methods() + JOINT + SPARSE


@dataclass
class TrainConfig:
    """Everything a run depends on (saved as config.json).

    ``bits`` is the code length for hashing and unsupervised methods, ``dim`` the
    embedding size for metric learning. Schedules: "constant", "cosine", and
    "warmup-invsqrt" (linear warm-up for ``warmup`` steps, then ``lr * sqrt(warmup /
    step)``, the Transformer schedule Image-Retrieve trains hashing heads with).
    """

    dataset: str = "fashion-mnist"
    protocol: str | None = None
    method: str = "csq"
    bits: int = 64
    dim: int = 128
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    optimizer: str = "adam"
    schedule: str = "cosine"
    warmup: int = 200
    weight_decay: float = 1e-5
    hidden: list[int] = field(default_factory=lambda: [1024])
    dropout: float = 0.1
    batchnorm: bool = False
    seed: int = 0
    size: int | None = None
    train_limit: int | None = None
    query_limit: int | None = None
    database_limit: int | None = None
    eval_every: int = 5
    eval_queries: int = 1000
    loss_options: dict[str, Any] = field(default_factory=dict)
    sampler: str | None = None
    miner: str | None = None
    memory_bank: bool = False
    tsne_points: int = TSNE_POINTS  # query images in tsne.png (0: no t-SNE map)
    feedback: str | None = None  # INDEX_DIR whose stored feedback adds pairs (cbir.train.feedback)
    feedback_weight: float = 1.0  # weight of the feedback loss in every batch
    captions: str | None = None  # joint methods: the caption file (cbir.data.captions)
    text_hidden: list[int] = field(default_factory=list)  # joint methods: the text head
    finetune: bool = False  # train the backbone end to end too (cbir.train.finetune)
    backbone_lr: float = 1e-4  # fine-tuning: the backbone's learning rate
    freeze_blocks: int = 0  # fine-tuning: the stem and this many early MBConv blocks stay frozen
    augment: str = "flip-shift"  # fine-tuning: none, flip, or flip-shift
    holdout: int = 0  # validation: this many training images query the rest of the training set

    def kind(self) -> str:
        if self.method in SPARSE:
            return "sparse"
        return "float" if self.method in metric_methods() or self.method in JOINT else "binary"


# ------------------------------------------------------------------ helpers
def set_seed(seed: int) -> None:
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
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


def _bar(total: int, desc: str, show: bool):
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="batch", leave=False, file=sys.stderr)


# ------------------------------------------------------------------ data
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


def run_splits(cfg: TrainConfig) -> tuple[Any, Any, Any, Any, Any]:
    """``(protocol, dataset, train, query, database)`` image sets of a run (with the
    ``*_limit`` subsets drawn from ``cfg.seed``); no features computed."""
    from cbir.eval.protocols import resolve

    proto, ds, splits = resolve(cfg.dataset, cfg.protocol, seed=cfg.seed)
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
    return proto, ds, train, query, database


def load_data(cfg: TrainConfig, progress: bool | None = None) -> TrainData:
    """Features (cached) of the training, query and database splits of the protocol."""
    from cbir.backbones.cache import dataset_features
    from cbir.backbones.registry import open_backbone

    proto, ds, train, query, database = run_splits(cfg)
    size = cfg.size or proto.size
    feats = lambda s: np.asarray(dataset_features(s, size=size, progress=progress))  # noqa: E731
    x = feats(train)
    q = feats(query)
    db = None if database is None else feats(database)
    y = train.labels
    n_classes = int(y.shape[1]) if y.ndim == 2 else int(y.max()) + 1
    return TrainData(
        x=x, y=y, n_classes=n_classes,
        query=q, query_labels=query.labels,
        database=db, database_labels=None if database is None else database.labels,
        protocol=proto, fingerprint=open_backbone(size=size).fingerprint,
        class_names=list(ds.class_names) or None,
    )  # fmt: skip


# ------------------------------------------------------------------ evaluation
def evaluate_transform(
    transform: Any, data: TrainData, limit: int | None = None, progress: bool | None = False
) -> dict[str, Any]:
    """Metrics of ``transform`` on the protocol (``limit``: first queries only, for speed)."""
    from cbir.eval.run import evaluate_features

    q, ql = data.query, data.query_labels
    if limit and limit < len(q):
        idx = np.random.default_rng(0).choice(len(q), limit, replace=False)
        q, ql = q[idx], ql[idx]
    return evaluate_features(
        transform, q, ql, data.database, data.database_labels, data.protocol, progress=progress,
        nmi=limit is None,
    )  # fmt: skip


def _checkpoint(
    cfg: TrainConfig, head: Head, mean: np.ndarray, std: np.ndarray, fingerprint: dict, extra: dict
) -> dict:
    return {
        "format": FORMAT,
        "method": cfg.method,
        "kind": cfg.kind(),
        "head": head.config,
        "state": {k: v.detach().clone() for k, v in head.state_dict().items()},
        "input": {
            "mean": torch.from_numpy(np.asarray(mean, np.float32)),
            "std": torch.from_numpy(np.asarray(std, np.float32)),
        },
        "backbone": fingerprint,
        "config": json.loads(json.dumps(asdict(cfg))),
        **extra,
    }


# ------------------------------------------------------------------ training
def _unsupervised(
    cfg: TrainConfig, x: np.ndarray
) -> tuple[Head, np.ndarray, np.ndarray, list[float]]:
    """Fit LSH / ITQ / the binary autoencoder and express it as a :class:`Head`."""
    from cbir.unsupervised import ITQ, LSH, BinaryAutoencoder

    dim = x.shape[1]
    mean = x.mean(0).astype(np.float64)
    if cfg.method == "lsh":
        m = LSH(cfg.bits, center=True, seed=cfg.seed).fit(x)
        head = Head(dim, cfg.bits)
        w = torch.from_numpy(m.planes.T.astype(np.float32))
        head.net[0].weight.data.copy_(w)
        head.net[0].bias.data.zero_()
        return head, mean, np.ones(dim), []
    if cfg.method == "itq":
        itq = ITQ(cfg.bits, seed=cfg.seed).fit(x)
        assert itq.components is not None and itq.rotation is not None and itq.mean is not None
        head = Head(dim, cfg.bits)
        head.net[0].weight.data.copy_(
            torch.from_numpy((itq.components @ itq.rotation).T.astype(np.float32))
        )
        head.net[0].bias.data.zero_()
        return head, itq.mean, np.ones(dim), itq.errors_
    hidden = cfg.hidden[0] if cfg.hidden else 256
    ae = BinaryAutoencoder(cfg.bits, hidden=hidden, lr=cfg.lr, batch_size=cfg.batch_size)
    ae.fit(x, epochs=cfg.epochs, seed=cfg.seed)
    assert ae.encoder is not None and ae.mean is not None and ae.std is not None
    head = Head(dim, cfg.bits, [hidden])
    head.net.load_state_dict(ae.encoder.state_dict())
    return head, ae.mean, ae.std, ae.history_


def _loss_for(cfg: TrainConfig, n_classes: int, n_train: int):
    if cfg.method in HASHING:
        from cbir.losses.hashing import get_hashing_loss

        kw = dict(cfg.loss_options)
        if cfg.memory_bank and cfg.method in ("dsh", "dpsh", "hashnet", "dch"):
            kw["n_samples"] = n_train
        if cfg.method == "csq":
            kw.setdefault("seed", cfg.seed)
        return get_hashing_loss(cfg.method, cfg.bits, n_classes, **kw)
    from cbir.losses.metric import get_metric_loss

    return get_metric_loss(cfg.method, cfg.dim, n_classes, **cfg.loss_options)


def train(
    cfg: TrainConfig,
    out: str | os.PathLike[str],
    progress: bool | None = None,
    data: TrainData | None = None,
    final_eval: bool = True,
) -> dict[str, Any]:
    """Train one model into ``out`` (a run directory); returns the final metrics."""
    if cfg.method not in all_methods():
        raise CbirError(f"unknown method {cfg.method!r}; known: {', '.join(all_methods())}")
    if cfg.feedback and getattr(cfg, "finetune", False):
        raise CbirError(
            "--feedback trains the head on frozen backbone features; drop --finetune to use it"
        )
    if cfg.method in JOINT:
        from cbir.train.joint import train_joint

        return train_joint(cfg, out, progress=progress, data=data, final_eval=final_eval)
    show = sys.stderr.isatty() if progress is None else progress
    run = Path(out)
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run / "config.json", asdict(cfg))
    data = data or load_data(cfg, progress=show)
    set_seed(cfg.seed)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    x_np = np.ascontiguousarray(data.x, np.float32)

    extra: dict[str, Any] = {}
    ft = None
    if cfg.finetune and (cfg.method in UNSUPERVISED or cfg.kind() not in ("binary", "float")):
        raise CbirError(
            f"--finetune trains the supervised methods' backbone; {cfg.method} has no loss to fine-tune with"
        )
    if cfg.method in UNSUPERVISED:
        head, mean, std, history = _unsupervised(cfg, x_np)
        for i, v in enumerate(history or [0.0]):
            rows.append({"epoch": i + 1, "loss": float(v)})
    elif cfg.method in SPARSE:
        from cbir.train.sparse import train_sparse

        head, mean, std, extra = train_sparse(cfg, data, x_np, rows, show)
    else:
        if cfg.finetune:  # the backbone is trained too (cbir.train.finetune)
            from cbir.train.finetune import Finetune

            ft = Finetune(cfg, show)
        head, mean, std = _train_head(cfg, data, x_np, rows, show, extra, finetune=ft)
    seconds = time.perf_counter() - t0
    if ft is not None:  # run/backbone.pt; query and database features of the new backbone
        data = ft.finish(run, data, extra)
    head.eval()
    ckpt = _checkpoint(cfg, head, mean, std, data.fingerprint, {"train_seconds": seconds, **extra})
    save_checkpoint(run / CHECKPOINT, ckpt)
    lines = "".join(json.dumps(r) + "\n" for r in rows)
    atomic_write(run / "metrics.jsonl", lambda f: f.write(lines.encode()))
    what = f"{cfg.bits} bits" if cfg.kind() == "binary" else f"{cfg.dim}-d"
    plot_curves(run / "loss.png", rows, f"{cfg.method}, {what}, {data.protocol.name}")
    if cfg.tsne_points and cfg.kind() in ("float", "binary"):  # binary: the real outputs
        title = f"{cfg.method}, {what}, {data.protocol.name}: query embedding (t-SNE)"
        write_tsne(run, LearnedTransform(ckpt), data.query, data.query_labels, title,
                   cfg.tsne_points, cfg.seed, names=data.class_names)  # fmt: skip
    result: dict[str, Any] = {
        "protocol": data.protocol.name,
        "model": str(run),
        "method": cfg.method,
        "bits" if cfg.kind() == "binary" else "dim": cfg.bits
        if cfg.kind() == "binary"
        else cfg.dim,
        "train_seconds": round(seconds, 2),
        "n_train": len(x_np),
    }
    if "feedback" in extra:
        result["feedback"] = extra["feedback"]
    if final_eval:
        transform = LearnedTransform.from_path(run)
        t1 = time.perf_counter()
        m = evaluate_transform(transform, data, progress=show)
        result["eval_seconds"] = round(time.perf_counter() - t1, 2)
        result["metrics"] = {k: v for k, v in m.items() if k != "curves"}
        result["n_queries"] = m.get("n_queries")
        result["n_database"] = m.get("n_database")
    atomic_write_json(run / "final.json", result)
    return result


def _train_head(
    cfg: TrainConfig, data: TrainData, x_np: np.ndarray, rows: list[dict[str, Any]], show: bool,
    extra: dict[str, Any] | None = None, finetune: Any = None,
):  # fmt: skip
    mean = x_np.mean(0)
    std = x_np.std(0) + 1e-6
    if finetune is not None:  # features that were constant (dead units) move when fine-tuned
        std = finetune.input_std(std)
    x = torch.from_numpy((x_np - mean) / std)
    y = torch.from_numpy(np.asarray(data.y))
    n = len(x)
    out_dim = cfg.bits if cfg.kind() == "binary" else cfg.dim
    head = Head(x.shape[1], out_dim, cfg.hidden, cfg.dropout, cfg.batchnorm)
    loss_fn = _loss_for(cfg, data.n_classes, n)
    params: list[Any] = list(head.parameters()) + [
        p for p in loss_fn.parameters() if p.requires_grad
    ]
    if finetune is not None:  # the backbone's own parameter group and learning rate
        params = [{"params": params}, *finetune.param_groups()]
    opt = make_optimizer(params, cfg)
    steps_per_epoch = max(1, n // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(cfg.schedule, s, total, cfg.warmup)
    )
    sampler = None
    if cfg.sampler:
        from cbir.samplers import make_sampler

        sampler = make_sampler(cfg.sampler, np.asarray(data.y), cfg.batch_size, seed=cfg.seed)
    miner = None
    if cfg.miner:
        from cbir.losses.metric import get_miner

        miner = get_miner(cfg.miner)
    feedback = None
    if cfg.feedback:  # pairs from the judgements stored in an index (cbir.train.feedback)
        from cbir.train.feedback import FeedbackTerm, load_feedback

        fb = load_feedback(cfg.feedback, data.fingerprint)
        xf = torch.from_numpy(((fb.features - mean) / std).astype(np.float32))
        feedback = FeedbackTerm(cfg.method, loss_fn, fb, xf, seed=cfg.seed)
        if extra is not None:
            extra["feedback"] = {
                "index": str(cfg.feedback),
                **fb.summary(),
                "tuples": len(feedback),
            }
    gen = np.random.default_rng(cfg.seed)
    step = 0
    for epoch in range(1, cfg.epochs + 1):
        head.train()
        if finetune is not None:
            finetune.train()
        t = time.perf_counter()
        total_loss, count = 0.0, 0
        batches = (
            sampler.epoch(epoch)
            if sampler is not None
            else _batches(gen.permutation(n), cfg.batch_size)
        )
        bar = _bar(steps_per_epoch, f"epoch {epoch}/{cfg.epochs}", show)
        for idx in batches:
            it = torch.from_numpy(np.asarray(idx, np.int64))
            u = head(x[it] if finetune is None else finetune.inputs(it, mean, std))
            if cfg.kind() == "binary":
                loss = loss_fn(u, y[it], it)  # dataset indices: for a memory bank
            else:
                loss = loss_fn(u, y[it], None if miner is None else miner(u, y[it]))
            if feedback is not None:
                loss = loss + cfg.feedback_weight * feedback(head)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if hasattr(loss_fn, "step_beta"):
                loss_fn.step_beta(step)
            if sampler is not None and hasattr(sampler, "observe"):
                sampler.observe(idx, loss_fn, u.detach(), y[it])
            total_loss += loss.item() * len(idx)
            count += len(idx)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{total_loss / max(count, 1):.4f}")
        if bar is not None:
            bar.close()
        if sampler is not None and hasattr(sampler, "end_epoch"):
            sampler.end_epoch(head, x)
        row = epoch_row(epoch, total_loss / max(count, 1), opt, t)
        if eval_due(cfg, epoch):
            head.eval()
            ckpt = _checkpoint(cfg, head, mean, std, data.fingerprint, {})
            tr = LearnedTransform(ckpt)
            ev_data = data if finetune is None else finetune.eval_data(data, cfg.eval_queries)
            m = evaluate_transform(tr, ev_data, limit=cfg.eval_queries)
            keys = ("map", "p@h2", "map@r", "recall@1")
            row["eval"] = {k: round(float(m[k]), 5) for k in keys if k in m}
            row["eval"]["queries"] = m.get("n_queries")
        rows.append(row)
        if show:
            ev = " ".join(f"{k}={v}" for k, v in row.get("eval", {}).items())
            print(f"epoch {epoch}: loss {row['loss']:.4f} {ev}", file=sys.stderr)
    return head, mean, std


def _batches(order: np.ndarray, batch_size: int):
    """Full batches of a permutation (the last partial batch is dropped, as usual)."""
    for i in range(0, len(order) - batch_size + 1, batch_size):
        yield order[i : i + batch_size]
    if len(order) < batch_size:
        yield order

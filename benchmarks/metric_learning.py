"""Deep metric learning on a zero-shot protocol: every loss, miner and sampling strategy.

Trains an embedding head (``cbir.train.trainer``, cached frozen backbone features) on the
seen classes and evaluates on the unseen ones (Recall@1/2/4/8, NMI, MAP@R), against the
frozen backbone (1280-d, centred) evaluated the same way. Three tables on the same budget
of optimisation steps (``--epochs`` x ``n // batch_size``; ``exhaustive`` adds the
epoch's last short batch):

- losses, each with its usual miner (``cbir.losses.metric.DEFAULT_MINERS``), random batches;
- triplet-loss miners, random batches (``direction``: all triplets filtered by the seed's
  direction condition, to compare with ``all``);
- samplers, triplet loss on *random triplets* (one random positive and negative per
  anchor; the triplet samplers train on exactly the triplets they draw), against the
  ``random`` sampler: plain random triplets.

``--validate`` chooses settings without looking at the unseen classes: it trains on the
first seen classes only (0-2 of fashion-mnist-zeroshot's 0-4) and evaluates zero-shot,
all-vs-all, on the remaining seen classes (3-4) of the training split (the protocol
``fashion-mnist-zeroshot-val``; for other protocols the first ``--fit-classes`` classes).

    python benchmarks/metric_learning.py [--size PX] [--epochs 10] [--dim 512] [--lr 1e-4]
        [--hidden ''] [--only NAME ...] [--validate] [--finetune]

The defaults (a linear head to 512-d, lr 1e-4, 10 epochs) are the setting that did best
on ``--validate`` at 64 and 224 px among five (head 1024 or linear, 128- or 512-d, lr
1e-3 or 1e-4, 5 or 10 epochs) for triplet + batch-hard, multi-similarity and normalized
softmax.

Backbone features are cached after the first run (``$CBIR_CACHE/features``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from cbir.eval.protocols import PROTOCOLS
from cbir.losses.metric import DEFAULT_MINERS, METRIC_LOSSES
from cbir.train.trainer import TrainData, evaluate_transform, load_data, make_config, train

KEYS = ("recall@1", "recall@2", "recall@4", "recall@8", "nmi", "map@r")


def rows(finetune: bool = False) -> list[tuple[str, str, dict[str, Any]]]:
    """(table, row name, TrainConfig fields) of every run."""
    out: list[tuple[str, str, dict[str, Any]]] = []
    for loss in METRIC_LOSSES:
        miner = DEFAULT_MINERS[loss]
        name = f"{loss}" + (f" + {miner}" if miner else "")
        out.append(("loss", name, {"method": loss, "miner": miner}))
    for miner in (
        "batch-hard",
        "semi-hard",
        None,
        "distance-weighted",
        "random-triplets",
        "direction",
        "direction-same",
    ):
        out.append(("miner", f"triplet + {miner or 'all'}", {"method": "triplet", "miner": miner}))
    for sampler in (
        "random",
        "exhaustive",
        "inverse-frequency",
        "inverse-frequency-max",
        "loss-guided",
        "m-per-class",
    ):
        fields = {"method": "triplet", "miner": "random-triplets", "sampler": sampler}
        out.append(("sampler", sampler, fields))
    for sampler in ("distance-guided", "cluster-anchors"):
        fields = {"method": "triplet", "miner": "as-sampled", "sampler": sampler}
        out.append(("sampler", sampler, fields))
    if finetune:  # end to end: the backbone is trained too (cbir.train.finetune)
        for loss in ("multi-similarity", "triplet"):
            fields = {"method": loss, "miner": DEFAULT_MINERS[loss], "finetune": True}
            out.append(("finetune", f"{loss} + {DEFAULT_MINERS[loss]}, end to end", fields))
    return out


def seen_class_validation(data: TrainData, fit_classes: int) -> TrainData:
    """Train on the first ``fit_classes`` seen classes; query all-vs-all the others."""
    y = np.asarray(data.y)
    fit, val = y < fit_classes, y >= fit_classes
    return replace(
        data,
        x=np.asarray(data.x)[fit],
        y=y[fit],
        n_classes=fit_classes,
        query=np.asarray(data.x)[val],
        query_labels=y[val],
        database=None,
        database_labels=None,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--protocol", default="fashion-mnist-zeroshot")
    ap.add_argument(
        "--size", type=int, default=None, help="backbone input size (default: the protocol's)"
    )
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--hidden", default="", help="hidden widths of the head ('': linear)")
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--weight-decay", type=float, default=1e-5)
    ap.add_argument("--head", default="mlp", help="mlp or residual (starts as the identity / PCA)")
    ap.add_argument("--head-init", default="pca", help="residual head: pca, pca-whiten or identity")
    ap.add_argument(
        "--center",
        default="train",
        help="residual head: centre on the training mean (train) or the evaluated collection's",
    )
    ap.add_argument(
        "--distill", type=float, default=0.0, help="weight of the frozen-similarity distillation"
    )
    ap.add_argument("--train-limit", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--validate",
        action="store_true",
        help="seen-class validation: fit on seen classes 0-2, query seen classes 3-4",
    )
    ap.add_argument("--fit-classes", type=int, default=3, help="--validate: classes to fit on")
    ap.add_argument("--finetune", action="store_true", help="add end-to-end fine-tuned rows")
    ap.add_argument("--backbone-lr", type=float, default=1e-4, help="--finetune: backbone lr")
    ap.add_argument("--finetune-epochs", type=int, default=None, help="--finetune: epochs")
    ap.add_argument("--finetune-limit", type=int, default=None, help="--finetune: training images")
    ap.add_argument("--freeze-blocks", type=int, default=0, help="--finetune: frozen MBConv blocks")
    ap.add_argument("--augment", default="flip", help="--finetune: none, flip or flip-shift")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1 is fastest for this small head on a shared CPU)",
    )
    ap.add_argument(
        "--only", nargs="*", default=None, help="row names or tables (loss, miner, sampler) to run"
    )
    ap.add_argument("--json", action="store_true", help="print the results as JSON lines too")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    hidden = [int(h) for h in args.hidden.split(",") if h.strip()]
    settings = dict(
        dataset=args.dataset,
        protocol=args.protocol,
        size=args.size,
        epochs=args.epochs,
        dim=args.dim,
        batch_size=args.batch_size,
        lr=args.lr,
        train_limit=args.train_limit,
        seed=args.seed,
        eval_every=0,
        hidden=hidden,
        dropout=args.dropout,
        weight_decay=args.weight_decay,
        tsne_points=0,
        options={
            "head": args.head,
            "head_init": args.head_init,
            "distill": args.distill,
            "center": args.center,
        },
    )
    base = make_config(settings)
    t = time.perf_counter()
    where = "unseen classes"
    val_protocol = f"{args.protocol}-val"
    if args.validate and val_protocol in PROTOCOLS:  # e.g. fashion-mnist-zeroshot-val
        settings["protocol"] = val_protocol
        base = make_config(settings)
        where = "held-out seen classes (validation; the test split is not read)"
    data = load_data(base, progress=sys.stderr.isatty())
    if args.validate and val_protocol not in PROTOCOLS:
        data = seen_class_validation(data, args.fit_classes)
        where = f"seen classes {args.fit_classes}+ (validation; the test classes are not used)"
    print(
        f"{data.protocol.name}: {len(data.x)} training images of {len(np.unique(data.y))} classes, "
        f"{len(data.query)} queries (all-vs-all, {where}); {args.size or data.protocol.size} px; features "
        f"{time.perf_counter() - t:.0f} s; {args.epochs} epochs x {len(data.x) // args.batch_size} "
        f"steps of {args.batch_size}, {args.dim}-d, head {hidden or 'linear'}, lr {args.lr}"
    )
    from cbir.heads.transform import FrozenTransform

    results: list[tuple[str, str, dict[str, float], float]] = []
    frozen = evaluate_transform(FrozenTransform(center=True), data)
    results.append(("frozen", "frozen backbone (1280-d, centred)", frozen, 0.0))
    done: dict[str, dict[str, Any]] = {}
    for table, name, fields in rows(args.finetune):
        if args.only and name not in args.only and table not in args.only:
            continue
        if fields.get("finetune"):
            if args.validate and val_protocol not in PROTOCOLS:
                continue  # fine-tuning needs the images of the protocol's own splits
            fields = {
                **fields,
                "backbone_lr": args.backbone_lr,
                "epochs": args.finetune_epochs or args.epochs,
                "freeze_blocks": args.freeze_blocks,
                "augment": args.augment,
                "train_limit": args.finetune_limit or args.train_limit,
            }
        key = json.dumps(fields, sort_keys=True)
        if key not in done:  # the same run in two tables is trained once
            with tempfile.TemporaryDirectory() as out:
                cfg = make_config(settings, **fields)
                own = cfg.train_limit != base.train_limit  # a subset: its own features and labels
                done[key] = train(cfg, out, progress=False, data=None if own else data)
        r = done[key]
        results.append((table, name, r["metrics"], r["train_seconds"]))
        m = r["metrics"]
        print(
            f"  {table:<8} {name:<40} "
            + " ".join(f"{k}={m.get(k, float('nan')):.4f}" for k in KEYS)
            + f" {r['train_seconds']:.0f} s",
            file=sys.stderr,
            flush=True,
        )

    head = (
        f"{'table':<8} {'run':<40}"
        + "".join(f"{k.replace('recall', 'R'):>8}" for k in KEYS)
        + f"{'dR@1':>8}{'train s':>9}"
    )
    print(head)
    print("-" * len(head))
    for table, name, m, sec in results:
        gain = 100 * (m["recall@1"] - frozen["recall@1"])
        print(
            f"{table:<8} {name:<40}"
            + "".join(f"{m.get(k, float('nan')):>8.4f}" for k in KEYS)
            + f"{gain:>+8.1f}{sec:>9.1f}"
        )
    best = max(results[1:], key=lambda r: r[2]["recall@1"], default=None)
    if best is not None:
        gain = 100 * (best[2]["recall@1"] - frozen["recall@1"])
        print(
            f"best Recall@1: {best[1]} ({best[0]}) {best[2]['recall@1']:.4f}, "
            f"{gain:+.1f} points over the frozen backbone's {frozen['recall@1']:.4f}"
        )
    if args.json:
        for table, name, m, sec in results:
            row = {"table": table, "run": name, "train_seconds": sec, **{k: m.get(k) for k in KEYS}}
            print(json.dumps(row))


if __name__ == "__main__":
    main()

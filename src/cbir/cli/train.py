"""``cbir train``: train a hashing, metric-learning or unsupervised head into a run directory."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cbir.cli.common import AddCommand
from cbir.codes.registry import code_kind
from cbir.errors import CbirError


def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError as e:
        raise CbirError(f"expected comma-separated integers, got {text!r}") from e


def _options(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in pairs:
        if "=" not in p:
            raise CbirError(f"--loss-option expects key=value, got {p!r}")
        k, v = p.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


#: The batch samplers of :data:`cbir.samplers.SAMPLERS` (named here: that package needs torch).
SAMPLER_NAMES = (
    "random",
    "m-per-class",
    "exhaustive",
    "inverse-frequency",
    "inverse-frequency-max",
    "loss-guided",
    "distance-guided",
    "cluster-anchors",
)

#: Held-out figures of joint image-text runs printed by `cbir train`.
JOINT_FIGURES = tuple(f"{d}_recall@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10))


def _fit_reduce_defaults(args: argparse.Namespace, given: set[str]) -> None:
    """The recipe reduces on the collection (a 1280-d residual head from the identity); a
    head asked for otherwise (``--head mlp``, ``--center train``, ``--head-init pca...``)
    reduces in the head, and ``--reduce head`` alone starts from the whitened PCA."""
    if "reduce" not in given and (
        args.head != "residual" or args.center != "collection" or args.head_init != "identity"
    ):
        args.reduce = "head"
    if args.reduce == "head" and "head_init" not in given and args.head_init == "identity":
        args.head_init = "pca-whiten"


def cmd_train(args: argparse.Namespace) -> int:
    """Train one run per code length; print its figures."""
    from cbir.train.config import METRIC_RECIPE, TRAIN_DEFAULTS
    from cbir.train.registry import FAMILIES, get_method, make_config
    from cbir.train.trainer import train

    method = get_method(args.method)
    defaults = METRIC_RECIPE if method.name == "metric" else TRAIN_DEFAULTS
    given = {key for key in defaults if getattr(args, key) is not None}
    for key, value in defaults.items():  # options not given take the family's defaults
        if getattr(args, key) is None:
            setattr(args, key, ",".join(map(str, value)) if key == "hidden" else value)
    if method.name == "metric":
        _fit_reduce_defaults(args, given)
    bits = _ints(args.bits)
    base = dict(
        dataset=args.dataset,
        protocol=args.protocol,
        method=args.method,
        dim=args.dim,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
        schedule=args.schedule,
        warmup=args.warmup,
        weight_decay=args.weight_decay,
        hidden=_ints(args.hidden) if args.hidden else [],
        dropout=args.dropout,
        seed=args.seed,
        size=args.size,
        train_limit=args.train_limit,
        query_limit=args.query_limit,
        database_limit=args.database_limit,
        eval_every=args.eval_every,
        loss_options=_options(args.loss_option),
        sampler=args.sampler,
        miner=args.miner,
        memory_bank=args.memory_bank,
        tsne_points=args.tsne_points,
        feedback=args.feedback,
        feedback_weight=args.feedback_weight,
        head=args.head,
        head_init=args.head_init,
        distill=args.distill,
        center=args.center,
        spectral=args.spectral,
        reduce=args.reduce,
    )
    joint = FAMILIES["joint"].names() + FAMILIES["dcmh"].names()
    if args.captions and args.method not in joint:
        raise CbirError(
            f"--captions trains a joint image-text space: use --method {' or '.join(joint)}"
        )
    base.update(
        captions=args.captions, text_hidden=_ints(args.text_hidden) if args.text_hidden else []
    )
    base.update(
        finetune=args.finetune,
        backbone_lr=args.backbone_lr,
        freeze_blocks=args.freeze_blocks,
        augment=args.augment,
        holdout=args.holdout,
        split=args.split,
        train_fraction=args.train_fraction,
        eval_on_train=args.eval_on_train,
    )
    progress = False if args.json else None
    out = Path(args.out)
    configs = [make_config(base, bits=b) for b in bits]
    if code_kind(configs[0].kind()).width_option != "bits":  # one run of --dim
        configs = configs[:1]
    method.prepare(configs[0])  # a bad option fails before any features are computed
    data = method.load_data(configs[0], progress=progress)
    split = getattr(data, "split", None)  # printed before the (long) training
    if split:
        print(f"split: {split['line']}", file=sys.stderr if args.json else sys.stdout)
        if split.get("warning"):
            print(f"cbir train: warning: {split['warning']}", file=sys.stderr)
    results = []
    for cfg in configs:
        run = out / f"bits-{cfg.options.width}" if len(configs) > 1 else out
        res = train(cfg, run, progress=progress, data=data)
        results.append(res)
        if not args.json:
            m = res.get("metrics", {})
            figs = "  ".join(
                f"{k} {m[k]:.4f}"
                for k in ("map", "p@h2", "map@r", "recall@1", "nmi", *JOINT_FIGURES)
                if k in m
            )
            print(
                f"{cfg.method} {cfg.options.width}: {figs}"
                f"  (train {res['train_seconds']} s) -> {run}"
            )
            if res.get("warning"):
                print(f"  warning: {res['warning']}")
            if "feedback" in res:
                fb = res["feedback"]
                print(
                    f"feedback from {fb['index']}: {fb['judgements']} judgements, {fb['positive_pairs']} positive and"
                    f" {fb['negative_pairs']} negative pairs, {fb['skipped']} skipped"
                )
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results, indent=2, default=float))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """Redraw a run's plots; print the files written."""
    from cbir.train.plots import redraw

    written = redraw(
        args.run_dir,
        tsne=not args.no_tsne,
        points=args.points,
        perplexity=args.perplexity,
        progress=False if args.json else None,
    )
    if args.json:
        print(json.dumps(written, indent=2))
    else:
        for name, path in written.items():
            print(f"{name}: {path}")
    return 0


def register(add: AddCommand) -> None:
    """Add ``cbir train`` and ``cbir plot``."""
    sp = add(
        "train",
        cmd_train,
        "Train a learned head (hashing, metric learning, unsupervised codes) on cached backbone features.",
    )
    sp.add_argument("--dataset", required=True, help="registered dataset name or ImageFolder path")
    sp.add_argument(
        "--protocol", default=None, help="protocol (default: the dataset's; see `cbir protocols`)"
    )
    sp.add_argument(
        "--method",
        required=True,
        help="dsh, dpsh, hashnet, dch, csq, triplet-tanh, dlbhc, lsh, itq, autoencoder, a metric loss, or vsepp / vse0 (image-text, with --captions)",
    )
    sp.add_argument(
        "--captions",
        default=None,
        metavar="FILE",
        help="vsepp / vse0: (image, caption) pairs: COCO captions JSON, Flickr30k results.csv, Karpathy JSON, or CSV/JSON of path|class,caption",
    )
    sp.add_argument(
        "--text-hidden",
        default="",
        help="vsepp / vse0: hidden layer widths of the text head (default: linear)",
    )
    sp.add_argument(
        "--bits", default="64", help="code length(s), e.g. 64 or 16,32,48,64 (one run each)"
    )
    sp.add_argument("--dim", type=int, default=128, help="embedding size (metric learning)")
    sp.add_argument(
        "--out",
        required=True,
        metavar="RUN_DIR",
        help="run directory (config, metrics, checkpoint, plots)",
    )
    sp.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="passes over the training set (default: 10 for metric learning, else 30)",
    )
    sp.add_argument("--batch-size", type=int, default=256, help="training batch size")
    sp.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate of the head (default: 1e-4 for metric learning, else 1e-3)",
    )
    sp.add_argument(
        "--optimizer",
        default="adam",
        choices=["adam", "adamw", "sgd", "rmsprop"],
        help="optimizer of the head",
    )
    sp.add_argument(
        "--schedule",
        default="cosine",
        choices=["constant", "cosine", "warmup-invsqrt"],
        help="learning-rate schedule",
    )
    sp.add_argument("--warmup", type=int, default=200, help="warm-up steps")
    sp.add_argument("--weight-decay", type=float, default=1e-5, help="L2 weight decay")
    sp.add_argument(
        "--hidden",
        default=None,
        help="hidden layer widths of the head, e.g. 1024 or '' for linear (default: linear for"
        " metric learning, else 1024)",
    )
    sp.add_argument(
        "--dropout", type=float, default=0.1, help="dropout of the head's hidden layers"
    )
    sp.add_argument(
        "--size", type=int, default=None, help="backbone input size (default: the protocol's)"
    )
    sp.add_argument(
        "--train-limit", type=int, default=None, help="train on a random subset of this many images"
    )
    sp.add_argument(
        "--query-limit", type=int, default=None, help="evaluate on a random subset of the queries"
    )
    sp.add_argument(
        "--database-limit",
        type=int,
        default=None,
        help="evaluate against a random subset of the database",
    )
    sp.add_argument(
        "--eval-every",
        type=int,
        default=5,
        help="epochs between evaluations on 1,000 queries (0: only at the end)",
    )
    sp.add_argument(
        "--loss-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="loss hyperparameter, e.g. alpha=0.1",
    )
    sp.add_argument(
        "--sampler",
        default=None,
        help="batch sampler (metric learning): "
        + ", ".join(SAMPLER_NAMES)
        + " (default: random batches)",
    )
    sp.add_argument("--miner", default=None, help="pair/triplet miner (metric learning)")
    sp.add_argument(
        "--head",
        default=None,
        choices=["mlp", "residual"],
        help="metric learning: residual (default; starts as the whitened PCA of the centred"
        " features)"
        " or mlp (a plain MLP on standardised features)",
    )
    sp.add_argument(
        "--head-init",
        default=None,
        choices=["pca", "pca-whiten", "identity"],
        help="residual head: its linear part starts as the identity (default for metric"
        " learning, with --reduce collection; alone, with --dim 1280), the whitened PCA"
        " (default with --reduce head) or the PCA",
    )
    sp.add_argument(
        "--center",
        default=None,
        choices=["collection", "train"],
        help="residual head: centre its inputs on the mean of the collection it indexes or"
        " evaluates (default, as the frozen backbone is centred) or on the training images'",
    )
    sp.add_argument(
        "--spectral",
        type=float,
        default=None,
        metavar="POWER",
        help="metric learning with --center collection: scale the outputs' principal"
        " coordinates on the collection by their variance ** POWER, fitted with the"
        " collection's mean (default 0.4 for metric learning; 0.5: the second-order similarity"
        " through the collection; 0: off)",
    )
    sp.add_argument(
        "--reduce",
        default=None,
        choices=["head", "collection"],
        help="metric learning: how the embedding reaches --dim: head (the head's linear part"
        " maps to it) or collection (the residual head stays in the feature space from the"
        " identity, and its outputs are projected on the top --dim principal axes of the"
        " collection it indexes, fitted with its mean; the default for metric learning with a"
        " residual head centred on the collection)",
    )
    sp.add_argument(
        "--distill",
        type=float,
        default=None,
        metavar="WEIGHT",
        help="metric learning: weight of the distillation of the frozen similarities of each"
        " batch (default 4.0; 0: off)",
    )
    sp.add_argument(
        "--memory-bank",
        action="store_true",
        help="pairwise hashing losses pair each batch with the whole training set",
    )
    sp.add_argument(
        "--finetune",
        action="store_true",
        help="train the backbone end to end with the head (PyTorch; use a low --size such as 64 on a CPU); the run stores backbone.pt",
    )
    sp.add_argument(
        "--backbone-lr", type=float, default=1e-4, help="--finetune: the backbone's learning rate"
    )
    sp.add_argument(
        "--freeze-blocks",
        type=int,
        default=0,
        metavar="N",
        help="--finetune: keep the stem and the first N of the 16 MBConv blocks frozen (their outputs are computed once)",
    )
    sp.add_argument(
        "--augment",
        default="flip-shift",
        choices=["none", "flip", "flip-shift"],
        help="--finetune: light augmentation (random mirror; and shift by up to 1/8 of the side)",
    )
    sp.add_argument(
        "--holdout",
        type=int,
        default=0,
        metavar="N",
        help="validation: N random training images query the rest of the training set (choose settings on this, not on the test queries)",
    )
    sp.add_argument(
        "--split",
        choices=("same-classes", "zero-shot"),
        default=None,
        help="a folder without train/ and test/: hold out part of each class (same-classes,"
        " the default) or whole classes (zero-shot); the held-out images query each other",
    )
    sp.add_argument(
        "--train-fraction",
        type=float,
        default=0.5,
        help="--split: the fraction of each class's images (same-classes) or of the classes"
        " (zero-shot) trained on; drawn with --seed (default: 0.5)",
    )
    sp.add_argument(
        "--eval-on-train",
        action="store_true",
        help="evaluate on the training images themselves (no split); the figures then"
        " overstate the model and a warning says so",
    )
    sp.add_argument(
        "--tsne-points", type=int, default=2000, help="query images in the run's tsne.png (0: none)"
    )
    sp.add_argument(
        "--feedback",
        default=None,
        metavar="INDEX",
        help="add the right/wrong judgements stored in this index as extra pairs (pair/triplet losses)",
    )
    sp.add_argument(
        "--feedback-weight",
        type=float,
        default=1.0,
        help="weight of the feedback loss in each batch",
    )
    sp.add_argument("--seed", type=int, default=0, help="seed of the splits, the head and batches")
    sp.add_argument("--json", action="store_true", help="print the final metrics as JSON")

    sp = add(
        "plot",
        cmd_plot,
        "Redraw a run's loss curve and t-SNE map of the query embedding (loss.png, tsne.png).",
    )
    sp.add_argument("run_dir", metavar="RUN_DIR", help="a `cbir train` run directory")
    sp.add_argument(
        "--points",
        type=int,
        default=None,
        help="a new subset of this many query images (default: the run's)",
    )
    sp.add_argument(
        "--perplexity", type=float, default=None, help="t-SNE perplexity (default: the run's, 30)"
    )
    sp.add_argument("--no-tsne", action="store_true", help="redraw the loss curve only")
    sp.add_argument("--json", action="store_true", help="print the files written as JSON")

"""``cbir evaluate``: run a protocol on the frozen backbone or a trained model."""

from __future__ import annotations

import argparse
import sys

from cbir.cli.common import AddCommand, add_alias
from cbir.cli.rerank import add_rerank_arguments, rerank_from_args
from cbir.errors import CbirError


def _ints(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError as e:
        raise CbirError(
            f"--map-at expects comma-separated integers, e.g. 1000,5000; got {text!r}"
        ) from e


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate and print (or write) the figures."""
    from cbir.eval.report import dumps, metric_label, require_plots, write_report

    if args.report:
        require_plots()
    progress = False if args.json else None
    if (args.dataset is None) == (args.index is None):
        raise CbirError(
            "give one of --dataset (a protocol's images) or --index INDEX_DIR (an index as it serves)"
        )
    if args.index is not None:
        summary, context = _evaluate_index(args, progress)
    else:
        summary, context = _evaluate_dataset(args, progress)
    summary["ties"] = summary["metrics"].pop("ties", "map is tie-aware (McSherry & Najork 2008)")
    if args.report:
        write_report(args.report, summary, context)
    if summary.get("warning"):
        print(f"cbir evaluate: warning: {summary['warning']}", file=sys.stderr)
    if args.json:
        print(dumps(summary))
        return 0
    print(f"protocol: {summary['protocol']}  ({summary['description']})")
    print(f"model:    {summary['model']}")
    if summary.get("split"):
        print(f"split:    {summary['split']['line']}")
    if summary.get("model_fingerprint"):
        print(f"fingerprint: {summary['model_fingerprint']} (`cbir info` shows the index's)")
    if summary.get("rerank"):
        print("rerank:   " + ", ".join(f"{k}={v}" for k, v in summary["rerank"].items()))
    print(
        f"queries:  {summary['n_queries']}  database: {summary['n_database']}"
        f"  (queries with no relevant item, excluded: {summary['n_queries_no_relevant']})"
    )
    if summary.get("n_unlabelled"):
        print(f"unlabelled: {summary['n_unlabelled']} image(s) in the database, not querying")
    for k, v in summary["metrics"].items():
        if isinstance(v, float):
            print(f"  {v:.4f}  {metric_label(k)}")
    print(f"ties:     {summary['ties']}")
    print(
        f"time:     {summary['seconds']['total']} s (features {summary['seconds']['features']} s)"
    )
    if summary.get("warning"):
        print(f"warning:  {summary['warning']}")
    if args.report:
        print(f"report:   {args.report}/report.md", file=sys.stderr)
    return 0


def _evaluate_index(args: argparse.Namespace, progress: bool | None) -> tuple[dict, dict]:
    """``--index``: the index's own model, search index and the --rerank options given."""
    from cbir.eval.served import evaluate_index

    for flag, value, default in (
        ("--protocol", args.protocol, None),
        ("--model", args.model, "frozen"),
        ("--size", args.size, None),
        ("--query-limit", args.query_limit, None),
        ("--split", args.split, None),
        ("--eval-on-train", args.eval_on_train, False),
    ):
        if value != default:
            raise CbirError(
                f"{flag} is for --dataset; --index evaluates the index's own model as it serves"
            )
    return evaluate_index(
        args.index,
        args.labels or "folder",
        rerank=rerank_from_args(args),
        map_at=_ints(args.map_at) or (),
        progress=progress,
    )


def _evaluate_dataset(args: argparse.Namespace, progress: bool | None) -> tuple[dict, dict]:
    """``--dataset``: a protocol's images through ``--model``."""
    from cbir.eval.run import evaluate

    if args.labels is not None:
        raise CbirError("--labels is for --index; a --dataset has its own labels")
    return evaluate(
        args.dataset,
        args.protocol,
        args.model,
        size=args.size,
        seed=args.seed,
        progress=progress,
        limit_queries=args.query_limit,
        map_at=_ints(args.map_at),
        rerank=rerank_from_args(args),
        split=args.split,
        train_fraction=args.train_fraction,
        eval_on_train=args.eval_on_train,
    )


def cmd_protocols(args: argparse.Namespace) -> int:
    """Print every evaluation protocol."""
    from cbir.eval.protocols import ALL_VS_ALL, protocols

    for p in [*protocols(), ALL_VS_ALL]:
        cut = (
            f"mAP@{p.map_at}"
            if p.map_at
            else ("mAP@all" if p.kind == "hashing" else "Recall@K, NMI, MAP@R")
        )
        print(f"{p.name:<24} dataset {p.dataset:<14} {cut}")
        print(f"{'':<24} {p.description}")
    return 0


def register(add: AddCommand) -> None:
    """Add ``cbir evaluate`` and ``cbir protocols``."""
    sp = add(
        "evaluate",
        cmd_evaluate,
        "Evaluate a model on a dataset protocol (mAP, P@k, P@H<=2, Recall@K, NMI, MAP@R).",
    )
    sp.add_argument(
        "--dataset",
        default=None,
        help="registered dataset name (see `cbir datasets`) or an ImageFolder path",
    )
    sp.add_argument(
        "--index",
        default=None,
        metavar="INDEX",
        help="evaluate an index as `cbir search` serves it (its backbone, centring, head,"
        " search index and the --rerank options), every labelled image querying the rest",
    )
    sp.add_argument(
        "--labels",
        default=None,
        metavar="folder|CSV",
        help="--index: labels from each image's parent folder name (folder, the default) or"
        " a CSV file of path,label rows",
    )
    sp.add_argument(
        "--protocol",
        default=None,
        help="protocol name (see `cbir protocols`); default: the dataset's",
    )
    sp.add_argument(
        "--model",
        default="frozen",
        help="the model: frozen (centred cosine), frozen-raw, or a `cbir train` run directory",
    )
    sp.add_argument(
        "--size",
        type=int,
        default=None,
        help="backbone input size (default: the protocol's / the model's)",
    )
    sp.add_argument("--seed", type=int, default=0, help="seed of the protocol's random splits")
    sp.add_argument(
        "--split",
        choices=("same-classes", "zero-shot"),
        default=None,
        help="a folder without train/ and test/: evaluate its held-out images (default: every"
        " image for the frozen model; a run's own split when it was trained on this folder)",
    )
    sp.add_argument(
        "--train-fraction",
        type=float,
        default=0.5,
        help="--split: the fraction of each class's images (same-classes) or of the classes"
        " (zero-shot) set aside for training (default: 0.5)",
    )
    sp.add_argument(
        "--eval-on-train",
        action="store_true",
        help="allow query images the --model was trained on (prints a warning)",
    )
    sp.add_argument(
        "--map-at",
        default=None,
        metavar="K[,K...]",
        help="mAP cut-offs to report, e.g. 1000,5000 (default: the protocol's)",
    )
    sp.add_argument(
        "--query-limit",
        type=int,
        default=None,
        metavar="N",
        help="evaluate on a random subset of N queries (as `cbir train --query-limit`)",
    )
    add_alias(sp, "--limit-queries", "query_limit", type=int)  # its name before issue 18
    sp.add_argument(
        "--out",
        "--report",
        dest="report",
        default=None,
        metavar="REPORT_DIR",
        help="write JSON, Markdown and PNG plots here",
    )
    sp.add_argument("--json", action="store_true", help="print the figures as JSON")
    add_rerank_arguments(sp)  # --rerank qe|alpha-qe|kreciprocal and its parameters
    add(
        "protocols",
        cmd_protocols,
        "List the evaluation protocols (splits and figures of the papers).",
    )

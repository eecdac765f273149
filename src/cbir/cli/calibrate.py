"""``cbir calibrate``: set an index's "no match" threshold (:mod:`cbir.search.calibrate`)."""

from __future__ import annotations

import argparse
import json
import sys

from cbir.cli.common import AddCommand, add_alias, add_index_argument


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Calibrate and store the threshold; print it."""
    from cbir.search.calibrate import calibrate

    res = calibrate(
        args.index_dir,
        args.dataset,
        args.precision,
        args.seed,
        args.image_limit,
        progress=False if args.json else None,
    )
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(
            f"threshold {res['score']:.4f}: precision {res['precision']:.3f} (target {args.precision}),"
            f" keeps {res['recall']:.1%} of right answers, rejects {res['negatives_rejected']:.1%}"
            f" of {res['negatives'] + res['generated_rejects']} negatives"
        )
        print(
            f"stored in {args.index_dir}; `cbir serve` answers 'no match' below it", file=sys.stderr
        )
    return 0


def register(add: AddCommand) -> None:
    """Add ``cbir calibrate``."""
    sp = add(
        "calibrate",
        cmd_calibrate,
        "Set the index's 'no match' threshold from labelled data (held-out classes and generated rejects as negatives).",
    )
    add_index_argument(sp, help_="index directory (its model scores the calibration images)")
    sp.add_argument(
        "--dataset", required=True, help="labelled dataset: registered name or ImageFolder path"
    )
    sp.add_argument(
        "--precision", type=float, default=0.9, help="precision of the answers kept (default 0.9)"
    )
    sp.add_argument("--seed", type=int, default=0, help="seed of the class and image split")
    sp.add_argument(
        "--image-limit",
        type=int,
        default=4000,
        metavar="N",
        help="calibrate on a random subset of N images of the dataset",
    )
    add_alias(sp, "--limit", "image_limit", type=int)  # its name before issue 18
    sp.add_argument(
        "--json", action="store_true", help="print the threshold and its figures as JSON"
    )

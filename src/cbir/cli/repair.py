"""``cbir repair INDEX``: rebuild what can be rebuilt, then check the index."""

from __future__ import annotations

import argparse

from cbir.cli.common import AddCommand, add_index_argument, print_json


def cmd_repair(args: argparse.Namespace) -> int:
    """Run :func:`repair_index`, then :func:`check_index`; exit 1 unless the index is whole."""
    from cbir.index.check import check_index
    from cbir.repair import repair_index

    report = repair_index(
        args.index_dir,
        drop_lost=args.drop_lost,
        batch_size=args.batch_size,
        workers=args.decode_threads,
    )
    check = check_index(args.index_dir, hashes=False)
    if args.json:
        print_json({**report.to_dict(), "check": check.to_dict()})
    else:
        print("\n".join(report.lines()))
        print("\n".join(check.lines()))
    return 0 if report.whole and check.ok else 1


def register(add: AddCommand) -> None:
    """Add ``cbir repair``."""
    sp = add(
        "repair",
        cmd_repair,
        "Repair an index: re-embed rows whose stored features are lost (from their files, by"
        " the index's backbone), rebuild the search index, then check it.",
    )
    add_index_argument(sp)
    sp.add_argument(
        "--drop-lost",
        action="store_true",
        help="remove the rows that cannot be repaired (their file is gone or changed)",
    )
    sp.add_argument("--batch-size", type=int, default=32, help="images per onnxruntime call")
    sp.add_argument(
        "--decode-threads", type=int, default=2, metavar="N", help="image decoding threads"
    )
    sp.add_argument("--json", action="store_true", help="print the report as JSON")

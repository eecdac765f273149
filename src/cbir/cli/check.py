"""``cbir check INDEX``: the integrity check, exit 1 when the index is broken."""

from __future__ import annotations

import argparse
import json

from cbir.cli.common import AddCommand, add_index_argument


def cmd_check(args: argparse.Namespace) -> int:
    """Run :func:`check_index` and print its report."""
    from cbir.index.check import check_index

    report = check_index(args.index_dir, hashes=not args.no_hashes)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print("\n".join(report.lines()))
    return 0 if report.ok else 1


def register(add: AddCommand) -> None:
    """Add ``cbir check``."""
    sp = add(
        "check",
        cmd_check,
        "Check an index: metadata, feature segments and search index agree; file hashes match.",
    )
    add_index_argument(sp)
    sp.add_argument("--no-hashes", action="store_true", help="do not re-hash the indexed files")
    sp.add_argument("--json", action="store_true", help="print the report as JSON")

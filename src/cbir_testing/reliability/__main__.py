"""``python -m cbir_testing.reliability [--trials N] [--quick]``: run the suite, print the table."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from cbir_testing.reliability.report import notes, table
from cbir_testing.reliability.suite import FAMILIES, Counts, run_all


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m cbir_testing.reliability",
        description="Kill -9, write faults, malformed inputs and concurrent readers: prints "
        "fault, trials, failures, data lost. Exit 1 if any trial failed.",
    )
    p.add_argument(
        "--trials",
        type=int,
        default=None,
        help="kill trials of each kind (default 100; --quick 3/3/2/2)",
    )
    p.add_argument(
        "--fault-trials", type=int, default=None, help="trials of each write fault (default 10)"
    )
    p.add_argument("--fuzz", type=int, default=None, help="malformed inputs (default 1000)")
    p.add_argument(
        "--rounds", type=int, default=None, help="writer rounds of the concurrency run (default 5)"
    )
    p.add_argument(
        "--soak",
        type=float,
        default=None,
        metavar="SECONDS",
        help="seconds of the service soak on the 100k-image index (default 600; 0 skips it)",
    )
    p.add_argument(
        "--quick", action="store_true", help="the fast part only (what the default tests run)"
    )
    p.add_argument("--only", choices=FAMILIES, default=None, help="run one family of faults")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--workdir", default=None, help="where trials write (default: a temp folder, removed)"
    )
    p.add_argument(
        "--json", default=None, metavar="OUT.json", help="also write the tallies as JSON"
    )
    args = p.parse_args(argv)
    counts = Counts.quick() if args.quick else Counts()
    if args.trials is not None:
        counts.kill_time = counts.kill_step = counts.kill_delete = counts.kill_compact = args.trials
    if args.soak is not None:
        counts.soak_seconds = args.soak
    for name in ("fault_trials", "fuzz", "rounds"):
        v = getattr(args, name)
        if v is not None:
            setattr(counts, "faults" if name == "fault_trials" else name, v)
    work = (
        Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="cbir-reliability-"))
    )
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        tallies = run_all(work, counts, seed=args.seed, only=args.only)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(table(tallies))
    for line in notes(tallies):
        print(f"- {line}")
    print(f"({time.perf_counter() - t0:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(t) for t in tallies], indent=2) + "\n")
    return 0 if all(t.ok for t in tallies) else 1


if __name__ == "__main__":
    sys.exit(main())

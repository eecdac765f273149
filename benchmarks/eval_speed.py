"""Speed of ``cbir.eval.metrics.evaluate_retrieval`` at the Fashion-MNIST protocol's size.

Random clustered data (10 classes, like Fashion-MNIST): 10,000 queries x 60,000 database
items, float embeddings scored by inner product and packed binary codes by Hamming
distance, with the default figures plus map@1000. Prints seconds and peak memory (the
process's maximum resident set; each case runs in a fresh process).

    python benchmarks/eval_speed.py [--queries 10000] [--database 60000]
        [--cases float:128,float:1280,hamming:64]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np


def _data(kind: str, dim: int, nq: int, nd: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    yq, yd = rng.integers(0, 10, nq), rng.integers(0, 10, nd)
    centres = rng.standard_normal((10, dim)).astype(np.float32)

    def rows(y: np.ndarray) -> np.ndarray:
        x = centres[y] + 1.5 * rng.standard_normal((len(y), dim), dtype=np.float32)
        if kind == "hamming":
            return np.packbits(x > 0, axis=1)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    return rows(yq), rows(yd), yq, yd


def run_case(case: str, nq: int, nd: int) -> dict:
    """One case in this process: seconds and peak RSS of the evaluation."""
    from cbir.eval.metrics import evaluate_retrieval

    kind, dim = case.split(":")
    q, d, yq, yd = _data(kind, int(dim), nq, nd)
    metric = "hamming" if kind == "hamming" else "cosine"
    t = time.perf_counter()
    m = evaluate_retrieval(q, d, yq, yd, metric=metric, map_at=(1000,), progress=False)
    seconds = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "case": case,
        "seconds": seconds,
        "peak_rss_mb": rss,
        "map": m["map"],
        "map@1000": m["map@1000"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--database", type=int, default=60_000)
    ap.add_argument("--cases", default="float:128,float:1280,hamming:64")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_case(args.one, args.queries, args.database)))
        return
    print(f"evaluate_retrieval, {args.queries:,} queries x {args.database:,} database, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"{'case':<14} {'seconds':>8} {'peak MB':>8} {'map':>7} {'map@1000':>9}")
    for case in args.cases.split(","):
        cmd = [sys.executable, __file__, "--one", case, "--queries", str(args.queries)]
        out = subprocess.run(
            cmd + ["--database", str(args.database)], capture_output=True, text=True, check=True
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"{r['case']:<14} {r['seconds']:>8.1f} {r['peak_rss_mb']:>8.0f} {r['map']:>7.4f} {r['map@1000']:>9.4f}"
        )


if __name__ == "__main__":
    main()

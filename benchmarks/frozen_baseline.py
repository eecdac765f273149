"""Fashion-MNIST retrieval with the frozen backbone: the baseline for learned heads.

Protocol ``fashion-mnist``: 60,000 train images = database, 10,000 test images =
queries, mAP@all (tie-aware), with and without centring by the database mean.
Backbone features are cached after the first run (``$CBIR_CACHE/features``).

    python benchmarks/frozen_baseline.py [--size 224] [--protocol fashion-mnist]
"""

from __future__ import annotations

import argparse
import time

from cbir.eval.run import evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--protocol", default="fashion-mnist")
    ap.add_argument("--size", type=int, default=None)
    args = ap.parse_args()
    rows = []
    for model in ("frozen-raw", "frozen"):
        t = time.perf_counter()
        s, _ = evaluate("fashion-mnist", args.protocol, model, size=args.size, progress=False)
        rows.append((s["model"], s["metrics"], s["seconds"], time.perf_counter() - t, s))
    s = rows[0][4]
    print(
        f"protocol {s['protocol']}: {s['n_queries']} queries x {s['n_database']} database, {s['size']} px"
    )
    keys = [
        k
        for k in ("map", "map_ordered", "p@10", "p@100", "recall@1", "map@r", "nmi")
        if k in rows[0][1]
    ]
    print(f"{'model':<28}" + "".join(f"{k:>12}" for k in keys) + f"{'seconds':>10}")
    for name, m, _sec, wall, _ in rows:
        print(f"{name:<28}" + "".join(f"{m[k]:>12.4f}" for k in keys) + f"{wall:>10.1f}")
    print("seconds: features (cached after the first run) + metrics; map is tie-aware")


if __name__ == "__main__":
    main()

"""Re-ranking on Fashion-MNIST: each mode's mAP, P@10 and seconds against plain search.

Protocol ``fashion-mnist`` (10,000 test queries x 60,000 train images, mAP@all
tie-aware, :mod:`cbir.eval`), every query re-ranked (:mod:`cbir.search.rerank`):
average QE (Chum et al. 2007), alpha-QE (Radenovic et al. 2018) and k-reciprocal
re-ranking (Zhong et al. 2017, within each query's top-``shortlist``).

    python benchmarks/rerank.py [--model frozen] [--model RUN_DIR ...] [--limit-queries N]

``--model``: ``frozen`` (centred cosine on the backbone features) or a ``cbir train`` run
directory (float or sparse codes); repeatable. Seconds: the whole evaluation (scores,
re-ranking, metrics) on this machine's 2 cores.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", default=None)
    ap.add_argument("--limit-queries", type=int, default=None)
    ap.add_argument("--qe-n", type=int, default=10, help="QE: vectors averaged, the query first")
    ap.add_argument("--alpha", type=float, default=3.0)
    ap.add_argument("--k1", type=int, default=20)
    ap.add_argument("--k2", type=int, default=6)
    ap.add_argument("--lam", type=float, default=0.3)
    ap.add_argument("--shortlist", type=int, default=100)
    args = ap.parse_args()

    from cbir.eval.run import evaluate_features, load_model
    from cbir.search.rerank import Rerank
    from cbir.train.trainer import load_data, make_config

    data = load_data(make_config(dataset="fashion-mnist"), progress=False)
    q, ql = np.asarray(data.query), data.query_labels
    if args.limit_queries:
        pick = np.sort(np.random.default_rng(0).choice(len(q), args.limit_queries, replace=False))
        q, ql = q[pick], ql[pick]
    modes = [
        None,
        Rerank("qe", n=args.qe_n),
        Rerank("alpha-qe", n=args.qe_n, alpha=args.alpha),
        Rerank("kreciprocal", k1=args.k1, k2=args.k2, lam=args.lam, shortlist=args.shortlist),
    ]
    print(
        f"protocol {data.protocol.name}: {len(q)} queries x {len(data.database)} database,"
        " mAP@all tie-aware"
    )
    print(f"{'model':<34}{'re-ranking':<52}{'mAP':>8}{'change':>9}{'P@10':>8}{'seconds':>9}")
    for model in args.model or ["frozen"]:
        transform, desc = load_model(model)
        base = None
        for rr in modes:
            t = time.perf_counter()
            m = evaluate_features(
                transform,
                q,
                ql,
                data.database,
                data.database_labels,
                data.protocol,
                progress=False,
                nmi=False,
                rerank=rr,
            )
            sec = time.perf_counter() - t
            base = m["map"] if rr is None else base
            change = "" if rr is None else f"{m['map'] - base:+.4f}"
            name = "none" if rr is None else rr.describe()
            print(
                f"{desc[:33]:<34}{name:<52}{m['map']:>8.4f}{change:>9}{m['p@10']:>8.4f}{sec:>9.1f}"
            )


if __name__ == "__main__":
    main()

"""Sparse codes + inverted index vs the flat float index: mAP and queries per second.

Protocol ``fashion-mnist`` (60,000 train images = database and training set, 10,000 test
images = queries, mAP@all tie-aware, :mod:`cbir.eval`). Rows:

- ``frozen 1280-d, faiss Flat``: the centred, L2-normalised backbone features in a faiss
  ``IndexFlatIP`` (exact), the real peer.
- ``sparse-topk`` / ``sparse-l1`` codes (:mod:`cbir.heads.sparse`) trained here with
  ``cbir.train`` on the cached features, unsupervised and with the label term, searched
  by :class:`cbir.index.sparse.SparseIndex` (posting lists, exact top-k, ties by id).

q/s: search only (queries already encoded), one thread for both (faiss OpenMP set to 1,
scipy is single-threaded), k = 10: ``batch`` = all 10,000 queries in one call, ``single``
= the first ``--single`` queries one call each. ``touched``: posting entries read per
query (the inverted index's work; the flat index reads 60,000 x 1,280 floats).

    python benchmarks/sparse_index.py [--dim 8192] [--k 32] [--epochs 5] [--retrain]

Runs are kept in ``$CBIR_CACHE/bench/sparse`` and reused unless ``--retrain``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import faiss
import numpy as np


def _qps(search, queries, single: int) -> tuple[float, float]:
    """(batch q/s: every query in one call, single q/s: ``single`` calls of one query)."""
    t = time.perf_counter()
    search(queries)
    batch = queries.shape[0] / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(single):
        search(queries[i : i + 1])
    return batch, single / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dim", type=int, default=8192)
    ap.add_argument("--k", type=int, default=32, help="active units of sparse-topk")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--l1", type=float, default=0.005)
    ap.add_argument("--single", type=int, default=500, help="queries timed one call each")
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for training")
    ap.add_argument("--only", default=None, help="comma-separated row names to run (default: all)")
    args = ap.parse_args()

    import torch

    from cbir.eval.run import evaluate_features
    from cbir.heads.learned import LearnedTransform
    from cbir.heads.transform import FrozenTransform
    from cbir.index.sparse import SparseIndex
    from cbir.train.trainer import load_data, make_config, train
    from cbir.utils import cache_dir

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(1)
    base = dict(
        dataset="fashion-mnist", epochs=args.epochs, hidden=[], dim=args.dim, eval_every=0, lr=1e-3
    )
    data = load_data(make_config(**base), progress=False)
    print(
        f"protocol {data.protocol.name}: {len(data.query)} queries x {len(data.database)} database"
        f" (= training set), backbone features 1280-d; search k=10, one thread"
    )
    runs = {
        f"sparse-topk k={args.k}": ("sparse-topk", {"k": args.k}),
        f"sparse-topk k={args.k} +labels": ("sparse-topk", {"k": args.k, "supervised": 1.0}),
        f"sparse-l1 l1={args.l1}": ("sparse-l1", {"l1": args.l1}),
        f"sparse-l1 l1={args.l1} +labels": ("sparse-l1", {"l1": args.l1, "supervised": 1.0}),
    }
    only = None if args.only is None else {s.strip() for s in args.only.split(",")}
    rows = []

    # the peer: frozen features in faiss IndexFlatIP
    t = FrozenTransform(center=True)
    t.fit(np.asarray(data.database))
    if only is None or "frozen" in only:
        m = evaluate_features(
            t,
            data.query,
            data.query_labels,
            data.database,
            data.database_labels,
            data.protocol,
            progress=False,
            nmi=False,
        )
        db, q = t(data.database), t(data.query)
        index = faiss.IndexFlatIP(db.shape[1])
        index.add(db)
        batch, single = _qps(lambda x: index.search(x, 10), q, args.single)
        rows.append(
            ("frozen 1280-d, faiss Flat", m, batch, single, 1280.0, db.size, db.nbytes, 0.0, 0.0)
        )

    for name, (method, opts) in runs.items():
        if only is not None and name not in only:
            continue
        tag = name.replace(" ", "_").replace("=", "").replace("+", "")
        run = cache_dir("bench", "sparse") / f"{tag}-d{args.dim}-e{args.epochs}"
        tsec = None
        if args.retrain or not (run / "model.pt").exists():
            t0 = time.perf_counter()
            cfg = make_config(**{**base, "method": method, "loss_options": opts})
            train(cfg, run, progress=False, data=data, final_eval=False)
            tsec = time.perf_counter() - t0
        else:
            tsec = json.loads((run / "final.json").read_text()).get("train_seconds")
        tr = LearnedTransform.from_path(run)
        m = evaluate_features(
            tr,
            data.query,
            data.query_labels,
            data.database,
            data.database_labels,
            data.protocol,
            progress=False,
            nmi=False,
        )
        te = time.perf_counter()
        codes_db = tr(data.database)
        codes_q = tr(data.query)
        enc = (len(data.database) + len(data.query)) / (time.perf_counter() - te)
        index = SparseIndex(tr.dim)
        index.add_with_ids(codes_db, np.arange(len(data.database), dtype=np.int64))
        index.postings()
        lists = np.diff(index.postings().indptr)
        touched = float(lists[codes_q.indices].sum() / codes_q.shape[0])
        batch, single = _qps(lambda x, ix=index: ix.search(x, 10), codes_q, args.single)
        active = float(codes_q.getnnz(axis=1).mean())
        rows.append((name, m, batch, single, active, touched, index.nbytes(), enc, tsec))

    peer = rows[0] if rows and rows[0][0].startswith("frozen") else None
    print(
        f"{'model / index':<34}{'mAP':>8}{'P@10':>8}{'active':>8}{'touched':>10}{'MB':>8}"
        f"{'batch q/s':>11}{'single q/s':>12}{'x Flat':>8}"
    )
    for r in rows:
        name, m, batch, single, active, touched, nbytes = r[:7]
        ratio = "" if peer is None else f"{batch / peer[2]:.2f}"
        print(
            f"{name:<34}{m['map']:>8.4f}{m['p@10']:>8.4f}{active:>8.1f}{touched:>10.0f}"
            f"{nbytes / 2**20:>8.1f}{batch:>11.0f}{single:>12.0f}{ratio:>8}"
        )
    for r in rows[1 if peer else 0 :]:
        train_s = "" if r[8] is None else f"; training {r[8]:.0f} s"
        print(f"  {r[0]}: encoding {r[7]:.0f} img/s (head + activation, from features){train_s}")
    print(
        "x Flat: batch q/s over faiss IndexFlatIP's. active: mean active units per query code;"
        " touched: posting entries read per query (Flat: every stored float); MB: index memory"
    )
    Path(cache_dir("bench", "sparse") / "last.json").write_text(
        json.dumps(
            [
                {
                    "name": r[0],
                    "map": r[1]["map"],
                    "p@10": r[1]["p@10"],
                    "batch_qps": r[2],
                    "single_qps": r[3],
                    "active": r[4],
                    "touched": r[5],
                }
                for r in rows
            ],
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

"""Sketch queries on Fashion-MNIST: drawings of the test split's images search the images.

Drawings: :func:`cbir.data.sketch.edge_sketch` (Canny edges of the image, jittered, broken
and thickened; seeded) of the test images (``--query-limit`` of them, a seed no training
drawing uses). Database: the training images (``--database-limit``), through the frozen
centred transform a default ``cbir index`` holds. Category mAP (mAP@all) and P@10. Rows:

- frozen backbone on edge maps: the drawing's own backbone features as the query;
- photo query (reference, ``--no-train`` prints it too): the test image itself, not its
  drawing, through the same frozen transform: what the image space gives a query that is
  an image;
- sketch head: ``cbir train --method sketch`` (after Liu et al., "Deep Sketch Hashing",
  CVPR 2017), trained on the drawings of the training images (``--train-limit``,
  ``--sketches`` seeds each); the query is the head's predicted image features.

    python benchmarks/sketch.py [--size 64] [--train-limit 10000] [--epochs 10] [--no-train] [--json]

Backbone features of the images and drawings are cached after the first run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from cbir.backbones.cache import dataset_features
from cbir.train.data import run_splits
from cbir.train.methods.sketch import load_sketch_data, sketch_map
from cbir.train.trainer import make_config, train


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--train-limit", type=int, default=10000)
    ap.add_argument("--query-limit", type=int, default=2000)
    ap.add_argument("--database-limit", type=int, default=10000)
    ap.add_argument("--sketches", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--hidden", default="1024", help="head hidden widths ('' linear)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-train", action="store_true", help="the untrained rows only")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    cfg = make_config(
        dataset="fashion-mnist",
        method="sketch",
        size=a.size,
        train_limit=a.train_limit,
        query_limit=a.query_limit,
        database_limit=a.database_limit,
        sketches=a.sketches,
        epochs=a.epochs,
        eval_every=0,
        batch_size=256,
        lr=a.lr,
        hidden=[int(h) for h in a.hidden.split(",") if h],
        seed=a.seed,
    )
    t0 = time.perf_counter()
    data = load_sketch_data(cfg, progress=sys.stderr.isatty())
    print(f"features: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    rows = []
    base = sketch_map(data.query, data)
    rows.append(("frozen backbone on edge maps", base, None))
    query_images = run_splits(cfg)[3]  # the images the drawings were made of
    photos = dataset_features(query_images, size=a.size, progress=False)
    rows.append(("photo query (reference: the test image itself)", sketch_map(photos, data), None))
    if not a.no_train:
        with tempfile.TemporaryDirectory() as tmp:
            res = train(cfg, Path(tmp) / "run", progress=sys.stderr.isatty(), data=data)
        row = ("sketch head (cbir train --method sketch)", res["metrics"], res["train_seconds"])
        rows.insert(1, row)
    setup = (
        f"Fashion-MNIST, size {a.size}: {len(data.query)} test-image drawings vs"
        f" {len(data.database)} training images"
    )
    if not a.no_train:
        setup += (
            f"; head trained on {len(data.images)} images x {a.sketches} drawings,"
            f" {a.epochs} epochs, hidden [{a.hidden}]"
        )
    if a.json:
        out = [
            {"row": name, "map": m["map"], "p@10": m["p@10"], "train_seconds": s}
            for name, m, s in rows
        ]
        print(json.dumps({"setup": setup, "rows": out}, indent=2))
        return 0
    print(setup)
    print("| query | mAP | P@10 | train s |")
    print("|---|---|---|---|")
    for name, m, s in rows:
        print(f"| {name} | {m['map']:.4f} | {m['p@10']:.4f} | {'' if s is None else f'{s:.0f}'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

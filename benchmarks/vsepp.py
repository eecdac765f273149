"""VSE++ joint image-text space on Fashion-MNIST with captions of held-out wording.

Captions: :func:`cbir.data.captions.fashion_mnist_captions`, templates x synonyms per
class (300 training captions; 60 test captions that combine only held-out synonyms with
held-out templates, so no test caption shares its class word or sentence frame with a
training caption). Training images: the train split (60,000, or ``--train-limit``);
evaluation: the 10,000 test images (or ``--query-limit``) against the 60 test captions,
Recall@1/5/10 image-to-text and text-to-image (a hit: an item of the query's class in the
top K; tie-aware), mAP both ways, and rsum (the six recalls added up). Rows:

- zero-shot: no training; an image is the probability-weighted MiniLM embedding of the
  names of its top-5 ImageNet classes (the backbone's own classifier), a caption its
  MiniLM embedding (:class:`cbir.heads.vsepp.ZeroShotJoint`);
- VSE0: the sum of hinges over all negatives in the batch;
- VSE++: the max of hinges, the hardest negative in the batch (Faghri et al., BMVC 2018);
- DCMH: Deep Cross-Modal Hashing (Jiang and Li, CVPR 2017), ``--bits`` binary codes on
  both sides, ranked by Hamming distance (ties counted as expected values).

The trained rows use the same heads, epochs, batches and seed (``cbir train --method
vse0|vsepp|dcmh``).

    python benchmarks/vsepp.py [--size 224] [--epochs 10] [--dim 256] [--train-limit N] [--json]

Backbone features and caption embeddings are cached after the first run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cbir.data.captions import fashion_mnist_captions, write_captions_json
from cbir.train.joint import evaluate_zero_shot, load_joint_data
from cbir.train.trainer import make_config, train

KEYS = [f"{d}_recall@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)] + [
    "i2t_map",
    "t2i_map",
    "rsum",
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--bits", type=int, default=64, help="DCMH code length")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--hidden", default="", help="image head hidden widths, e.g. 1024 ('' linear)")
    ap.add_argument("--margin", type=float, default=0.2)
    ap.add_argument("--train-limit", type=int, default=None)
    ap.add_argument("--query-limit", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="cbir-vsepp-"))
    caps = write_captions_json(tmp / "fashion_captions.json", fashion_mnist_captions())
    hidden = [int(h) for h in a.hidden.split(",") if h.strip()]
    base = make_config(
        dataset="fashion-mnist",
        method="vsepp",
        captions=str(caps),
        size=a.size,
        epochs=a.epochs,
        dim=a.dim,
        batch_size=a.batch_size,
        lr=a.lr,
        hidden=hidden,
        seed=a.seed,
        train_limit=a.train_limit,
        query_limit=a.query_limit,
        eval_every=0,
        loss_options={"margin": a.margin},
    )
    t = time.perf_counter()
    data = load_joint_data(base, progress=None)
    load_s = time.perf_counter() - t
    results: list[dict[str, Any]] = []
    t = time.perf_counter()
    results.append(
        {
            "row": "zero-shot (ImageNet top-5 names -> MiniLM)",
            "train_seconds": 0.0,
            "metrics": evaluate_zero_shot(data),
            "eval_seconds": round(time.perf_counter() - t, 2),
        }
    )
    for method, name in (("vse0", "VSE0 (sum of hinges)"), ("vsepp", "VSE++ (max of hinges)")):
        cfg = make_config(**{**base.flat(), "method": method})
        res = train(cfg, tmp / method, progress=False, data=data)
        results.append({"row": name, **res})
    flat = {k: v for k, v in base.flat().items() if k != "loss_options"}
    cfg = make_config(**{**flat, "method": "dcmh", "bits": a.bits})
    res = train(cfg, tmp / "dcmh", progress=False, data=data)
    results.append({"row": f"DCMH ({a.bits} bits, Hamming)", **res})
    info = {
        "size": a.size,
        "epochs": a.epochs,
        "dim": a.dim,
        "batch_size": a.batch_size,
        "lr": a.lr,
        "image_hidden": hidden,
        "margin": a.margin,
        "n_train_images": len(data.images),
        "n_train_captions": len(data.texts),
        "n_test_images": len(data.test_images),
        "n_test_captions": len(data.test_texts),
        "load_seconds": round(load_s, 1),
    }
    if a.json:
        print(json.dumps({"setup": info, "rows": results}, indent=2, default=float))
        return 0
    print(
        f"Fashion-MNIST, {info['n_train_images']} train images x {info['n_train_captions']} captions;"
        f" test: {info['n_test_images']} images x {info['n_test_captions']} captions of held-out wording;"
        f" {a.size} px, {a.dim}-d, image head {hidden or 'linear'}, text head linear, {a.epochs} epochs,"
        f" batch {a.batch_size}, lr {a.lr}, margin {a.margin}, seed {a.seed}; features and captions loaded in"
        f" {info['load_seconds']} s"
    )
    head = "| method | i2t R@1 | i2t R@5 | i2t R@10 | t2i R@1 | t2i R@5 | t2i R@10 | i2t mAP | t2i mAP | rsum | train s |"
    print(head)
    print("|---" + "|---:" * (head.count("|") - 2) + "|")
    for r in results:
        m = r["metrics"]
        cells = " | ".join(f"{m[k]:.3f}" for k in KEYS[:-1]) + f" | {m['rsum']:.2f}"
        print(f"| {r['row']} | {cells} | {r['train_seconds']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

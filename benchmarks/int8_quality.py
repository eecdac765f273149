"""Retrieval quality of ``efficientnet-lite0-int8`` against the fp32 ``efficientnet-lite0``.

Prints, in one run:
  * the ``fashion-mnist`` protocol (60,000 train images = database, 10,000 test images =
    queries, mAP@all, tie-aware) with frozen, centred features (the database mean is
    subtracted, then cosine), for both backbones at ``--size``;
  * scikit-image's bundled photos as the database and ``--copies`` augmented copies of
    each (random crop, rotation, flip, brightness/contrast, JPEG re-encoding; seeded) as
    queries, at 224 px: rank-1 accuracy of each backbone and how often the two agree;
  * the decision rule of issue 15: int8 may be the default for new indexes only if its mAP
    is within 0.01 of fp32 and every query has the same rank-1 result.

Backbone features of Fashion-MNIST are cached (``$CBIR_CACHE/features``) after the first run.

    python benchmarks/int8_quality.py [--size 224] [--copies 8] [--queries N]
"""

from __future__ import annotations

import argparse
import io
import os
import time

import numpy as np
from PIL import Image, ImageEnhance

FP32, INT8 = "efficientnet-lite0", "efficientnet-lite0-int8"


def fashion_map(spec: str, size: int, queries: int | None) -> tuple[float, float]:
    """(mAP@all, seconds) of the ``fashion-mnist`` protocol, frozen and centred."""
    from cbir.backbones.cache import dataset_features
    from cbir.eval.protocols import resolve
    from cbir.eval.run import evaluate_features, load_model

    t = time.perf_counter()
    proto, _, splits = resolve("fashion-mnist", None, 0)
    query = splits.query
    if queries and queries < len(query):
        idx = np.sort(np.random.default_rng(0).choice(len(query), queries, replace=False))
        query = query.subset(idx, f"{query.name}-q{queries}")
    qf = dataset_features(query, size=size, progress=False, backbone=spec)
    dbf = dataset_features(splits.database, size=size, progress=False, backbone=spec)
    transform, _ = load_model("frozen", qf.shape[1])
    m = evaluate_features(
        transform, qf, query.labels, dbf, splits.database.labels, proto, progress=False, nmi=False
    )
    return float(m["map"]), time.perf_counter() - t


def augment(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A seeded augmented copy: crop 60-90 % of each side, rotate +-15 deg, maybe flip,
    brightness and contrast 0.7-1.3, JPEG quality 40-90."""
    w, h = img.size
    cw, ch = int(w * rng.uniform(0.6, 0.9)), int(h * rng.uniform(0.6, 0.9))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    out = img.crop((x, y, x + cw, y + ch)).rotate(float(rng.uniform(-15, 15)), Image.BILINEAR)
    if rng.random() < 0.5:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    out = ImageEnhance.Brightness(out).enhance(float(rng.uniform(0.7, 1.3)))
    out = ImageEnhance.Contrast(out).enhance(float(rng.uniform(0.7, 1.3)))
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=int(rng.integers(40, 91)))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def photo_rank1(copies: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Rank-1 database photo of every augmented query, per backbone (centred cosine)."""
    from cbir.backbones.efficientnet_int8 import _photos
    from cbir.backbones.registry import open_backbone

    photos = _photos()
    rng = np.random.default_rng(seed)
    queries = [augment(p, rng) for p in photos for _ in range(copies)]
    out = {"truth": np.repeat(np.arange(len(photos)), copies)}
    for spec in (FP32, INT8):
        bb = open_backbone(spec, size=224)
        db, q = bb.embed(photos), bb.embed(queries)
        mean = db.mean(0, keepdims=True)
        db, q = db - mean, q - mean
        db /= np.linalg.norm(db, axis=1, keepdims=True)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        out[spec] = np.argmax(q @ db.T, axis=1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=224, help="Fashion-MNIST input size (px)")
    ap.add_argument("--copies", type=int, default=8, help="augmented queries per photo")
    ap.add_argument("--queries", type=int, default=None, help="Fashion-MNIST queries (all)")
    args = ap.parse_args()
    before = " ".join(f"{v:.2f}" for v in os.getloadavg())
    rows = {spec: fashion_map(spec, args.size, args.queries) for spec in (FP32, INT8)}
    r = photo_rank1(args.copies)
    after = " ".join(f"{v:.2f}" for v in os.getloadavg())
    n = len(r["truth"])
    nq = args.queries or 10000
    print(f"load average (1, 5, 15 min): before {before}; after {after}")
    print(f"fashion-mnist protocol, frozen centred, {nq} queries x 60000 database, {args.size} px")
    print(f"{'backbone':<26} {'mAP':>8} {'seconds':>8}")
    for spec, (m, sec) in rows.items():
        print(f"{spec:<26} {m:>8.4f} {sec:>8.1f}")
    d_map = rows[INT8][0] - rows[FP32][0]
    print(f"{'int8 - fp32':<26} {d_map:>+8.4f}")
    print(f"scikit-image photos: {n // args.copies} photos, {n} augmented queries, 224 px")
    for spec in (FP32, INT8):
        print(f"{spec:<26} rank-1 accuracy {np.mean(r[spec] == r['truth']):.4f}")
    agree = r[FP32] == r[INT8]
    print(f"{'rank-1 agreement':<26} {agree.mean():.4f} ({int(agree.sum())}/{n})")
    ok = abs(d_map) <= 0.01 and bool(agree.all())
    print(
        "int8 as the default:",
        "yes (mAP within 0.01, same rank-1 results)"
        if ok
        else f"no (mAP {'within' if abs(d_map) <= 0.01 else 'not within'} 0.01;"
        f" {int((~agree).sum())} of {n} rank-1 results differ)",
    )


if __name__ == "__main__":
    main()

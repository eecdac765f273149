"""Retrieval pooling side by side: avg, GeM, R-MAC, each at one scale and multi-scale,
without and with flip averaging, without and with power normalisation.

    python benchmarks/pooling.py [--fashion-db 5000] [--fashion-queries 1000] [--copies 500]
        [--seed 0] [--samples 0,1,2,3] [--whitening-study]

Every row goes through what ``cbir index --pooling P [--scales multi] [--flip]`` does: the
EfficientNet-Lite0 feature-map export at 224 px (and 158, 112 px for multi-scale), the
pooling of :mod:`cbir.backbones.pooling`, then the index's transform fitted on the
database (:class:`cbir.heads.frozen.FrozenTransform`: centred; R-MAC PCA-whitened, as by
default, and not, as with ``--no-whiten``), cosine. The feature maps of each image (and of
its mirrored preprocessed batch, for the ``--flip`` rows) are computed once and every row
pooled from them. Rows of GeM with p = 4 (a study: the option's p is 3) come from the same
maps, and the ``power 0.5`` rows (``--power 0.5``: the signed square root of the pooled
descriptor, L2-normalised) from the same pooled vectors.

Three tasks:

- **photos, near duplicates**: scikit-image's 13 photos, each as the whole (square centre)
  and 50 overlapping square crops (0.7, 0.5 and 0.35 of the short side on 3x3, 4x4 and 5x5
  grids): 663 database images, where crops of one photo overlap and are hard negatives.
  Queries: transformed copies of ``--photo-queries`` of them (the load benchmark's
  :func:`cbir_testing.collection.transformed`: rotated, shifted, rescaled, maybe mirrored,
  contrast, re-encoded JPEG or PNG). Source at rank 1 / in the top 10.
- **fashion copies**: the load benchmark's task on a subset: database the first
  ``--fashion-db`` Fashion-MNIST training images, queries transformed copies of
  ``--copies`` of them. Source at rank 1 / in the top 10, and each row's top-10 difference
  from avg at one scale (points) with its paired-bootstrap 95% interval over the copies.
- **fashion category**: ``--fashion-queries`` test images against the same database,
  mAP over the whole ranking (same class relevant), and each row's per-query AP difference
  from avg at one scale with its paired-bootstrap 95% interval over the queries.

``--whitening-study`` adds rows of R-MAC with plain PCA-whitening reduced to 64-512
dimensions instead of the index's full-dimension Ledoit-Wolf one.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from cbir.backbones import pooling as P
from cbir.backbones.efficientnet_lite import EfficientNetLite0
from cbir.data.idx import load_idx
from cbir.eval.metrics import evaluate_retrieval
from cbir.heads.base import l2_normalize
from cbir.heads.frozen import FrozenTransform
from cbir.utils import cache_dir
from cbir_testing.collection import encode, transformed
from cbir_testing.reliability.corpus import PHOTOS

FASHION = Path("/usr/share/datasets/fashion-mnist")
#: The poolings computed from each feature map: the options' three and GeM with p = 4.
POOLERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "avg": P.avg,
    "gem": P.gem,
    "rmac": P.rmac,
    "gem4": lambda m: P.gem(m, 4.0),
}
ROWS = [(p, ms) for ms in (False, True) for p in POOLERS]
#: Square crops of each photo: (side as a fraction of the short side, grid per dimension).
CROPS = ((0.7, 3), (0.5, 4), (0.35, 5))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def photo_set(seed: int = 0, n_queries: int = 200) -> tuple[list, list, np.ndarray]:
    """The near-duplicate database (whole photos and overlapping crops), transformed copies
    of ``n_queries`` of them, and which database image each copy is of."""
    from skimage import data

    rng = np.random.default_rng(seed)
    db = []
    for name in PHOTOS:
        a = getattr(data, name)()
        if a.dtype != np.uint8:
            a = (a * 255).astype(np.uint8) if a.max() <= 1 else a.astype(np.uint8)
        img = Image.fromarray(a[:, :, :3] if a.ndim == 3 else a).convert("RGB")
        w, h = img.size
        c = min(w, h)
        crops = [((w - c) // 2, (h - c) // 2, c)]
        for frac, grid in CROPS:
            s = int(c * frac)
            for fy in np.linspace(0, 1, grid):
                for fx in np.linspace(0, 1, grid):
                    crops.append((int(fx * (w - s)), int(fy * (h - s)), s))
        for x, y, s in crops:
            db.append(img.crop((x, y, x + s, y + s)))
    src = np.sort(rng.choice(len(db), n_queries, replace=False))
    queries = [copy_of(db[i], rng) for i in src]
    return db, queries, src


def copy_of(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A transformed copy, encoded and decoded again (as an upload would be)."""
    import io

    out, fmt = transformed(im, rng)
    return Image.open(io.BytesIO(encode(out.convert("RGB"), fmt))).convert("RGB")


def pooled(
    bb: EfficientNetLite0, images: list, tag: str, mirror: bool = False, batch: int = 32
) -> dict:
    """``{(pooling, multi): (n, 1280)}`` of ``images`` (of their preprocessed batches
    mirrored, with ``mirror``: what ``--flip`` adds), cached under $CBIR_CACHE/pooling."""
    tag += "-mirror" if mirror else ""
    path = cache_dir("pooling") / f"{tag}-{len(images)}.npz"
    if path.exists():
        z = np.load(path)
        if all(f"{p}-{int(ms)}" in z for p, ms in ROWS):
            return {(p, ms): z[f"{p}-{int(ms)}"] for p, ms in ROWS}
    per: dict[str, list[list[np.ndarray]]] = {p: [[] for _ in bb.scales] for p in POOLERS}
    t0 = time.perf_counter()
    for i in range(0, len(images), batch):
        b = bb.batch(images[i : i + batch])
        maps, _ = bb.feature_maps(P.mirrored(b) if mirror else b)
        for p, fn in POOLERS.items():
            for j, m in enumerate(maps):
                per[p][j].append(fn(m))
        log(f"  {tag}: {min(i + batch, len(images))}/{len(images)} {time.perf_counter() - t0:.0f}s")
    out = {}
    for p in POOLERS:
        scales = [np.concatenate(v) for v in per[p]]
        out[(p, False)] = scales[0]
        out[(p, True)] = P.combine_scales(scales)
    np.savez(path, **{f"{p}-{int(ms)}": v for (p, ms), v in out.items()})
    return out


def fashion_copies(f_db: list, n_copies: int, seed: int) -> tuple[np.ndarray, list]:
    """The sample of copies of ``--seed`` ``seed``: the source rows drawn from ``f_db`` and
    their transformed copies (one generator for both, so a seed always gives the same)."""
    rng = np.random.default_rng(seed)
    src = rng.choice(len(f_db), n_copies, replace=False)
    return src, [copy_of(f_db[i], rng) for i in src]


def flipped(plain: np.ndarray, mirror: np.ndarray, ms: bool) -> np.ndarray:
    """The ``--flip`` descriptor from an image's rows and its mirror's: the mean of all the
    L2-normalised per-scale rows (a multi-scale row is already the mean of its scales')."""
    if ms:
        return ((plain + mirror) / 2).astype(np.float32)
    return P.combine_scales([plain, mirror])


def index_view(db: np.ndarray, whiten: bool) -> Callable[[np.ndarray], np.ndarray]:
    """The index's transform fitted on the database ``db`` (centred; PCA-whitened when
    ``whiten``: R-MAC's default, ``--no-whiten`` turns it off)."""
    t = FrozenTransform(dim=db.shape[1], center=True, whiten=whiten)
    t.fit(db)
    return t


def pca_whitening(dims: int) -> Callable[[np.ndarray], Callable[[np.ndarray], np.ndarray]]:
    """The study's alternative: plain PCA-whitening to the top ``dims`` components (Jegou &
    Chum, ECCV 2012), fitted on the database."""

    def make(db: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        mu = db.mean(0, dtype=np.float64)
        vals, vecs = np.linalg.eigh(np.cov((db - mu).T))
        top = np.argsort(vals)[::-1][:dims]
        proj = vecs[:, top] / np.sqrt(np.maximum(vals[top], 1e-12))
        return lambda x: l2_normalize(((x - mu) @ proj).astype(np.float32))

    return make


def query_aps(q: np.ndarray, db: np.ndarray, ql: np.ndarray, dl: np.ndarray) -> np.ndarray:
    """Average precision of each query over the whole ranking (same label relevant)."""
    out = []
    for i in range(0, len(q), 250):
        rel = dl[np.argsort(-(q[i : i + 250] @ db.T), axis=1)] == ql[i : i + 250, None]
        prec = np.cumsum(rel, 1) / np.arange(1, rel.shape[1] + 1)
        out.append((prec * rel).sum(1) / rel.sum(1))
    return np.concatenate(out)


def diff_interval(d: np.ndarray, seed: int = 0, points: bool = False) -> str:
    """Mean of the per-query differences ``d`` and its paired-bootstrap 95% interval (to
    one decimal, for ``points``, else four)."""
    rng = np.random.default_rng(seed)
    boots = [d[rng.integers(0, len(d), len(d))].mean() for _ in range(2000)]
    lo, hi = np.percentile(boots, [2.5, 97.5])
    f = "+.1f" if points else "+.4f"
    return f"{d.mean():{f}} [{lo:{f}}, {hi:{f}}]"


def source_ranks(db: np.ndarray, q: np.ndarray, src: np.ndarray) -> np.ndarray:
    """The rank (0: first) of each query's source among the database rows."""
    s = q @ db.T
    return (s > s[np.arange(len(q)), src][:, None]).sum(1)


def source_rates(db: np.ndarray, q: np.ndarray, src: np.ndarray) -> tuple[float, float]:
    """Fraction of queries whose source is at rank 1, and in the top 10."""
    rank = source_ranks(db, q, src)
    return float((rank == 0).mean()), float((rank < 10).mean())


# (name, pooling, multi-scale, flip, power) of the per-sample table
SAMPLE_ROWS = [
    ("avg (default)", "avg", False, False, 1.0),
    ("`--pooling gem --scales multi`", "gem", True, False, 1.0),
    ("`--pooling rmac --no-whiten --scales multi`", "rmac", True, False, 1.0),
    ("`--scales multi --flip` (avg)", "avg", True, True, 1.0),
    ("`--pooling gem --scales multi --flip`", "gem", True, True, 1.0),
    ("`--pooling rmac --no-whiten --scales multi --flip`", "rmac", True, True, 1.0),
    ("`--pooling gem --scales multi --flip --power 0.5`", "gem", True, True, 0.5),
    ("`--pooling rmac --no-whiten --scales multi --flip --power 0.5`", "rmac", True, True, 0.5),
]


def samples_table(bb, f_db: list, db_feats: dict, args, seeds: list[int]) -> None:
    """Fashion copies top-10 of :data:`SAMPLE_ROWS` over the samples of copies drawn with
    each of ``seeds`` (as ``--seed`` draws them), and each row's gain over avg pooled over
    every copy with its paired-bootstrap 95% interval."""
    hits: dict[str, list[np.ndarray]] = {r[0]: [] for r in SAMPLE_ROWS}
    for seed in seeds:
        src, copies = fashion_copies(f_db, args.copies, seed)
        tag = f"fashion-copies-{args.copies}-s{seed}"
        plain, mirror = pooled(bb, copies, tag), pooled(bb, copies, tag, mirror=True)
        for name, p, ms, flip, power in SAMPLE_ROWS:
            q = flipped(plain[p, ms], mirror[p, ms], ms) if flip else plain[p, ms]
            db = db_feats[p, ms, flip]
            if power != 1.0:
                q, db = P.power_normalise(q, power), P.power_normalise(db, power)
            t = index_view(db, False)
            hits[name].append(source_ranks(t(db), t(q), src) < 10)
    print()
    print(
        f"fashion copies top-10 over {len(seeds)} samples of {args.copies} copies (seeds {seeds})"
    )
    print(
        "| setting | "
        + " | ".join(f"seed {s}" for s in seeds)
        + " | gain over avg, all copies [95%] |"
    )
    print("|---|" + "---:|" * (len(seeds) + 1))
    base = 100.0 * np.concatenate(hits[SAMPLE_ROWS[0][0]])
    for name, *_ in SAMPLE_ROWS:
        rates = " | ".join(f"{100 * h.mean():.1f}%" for h in hits[name])
        gain = diff_interval(100.0 * np.concatenate(hits[name]) - base, points=True)
        print(f"| {name} | {rates} | {gain} |", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fashion-db", type=int, default=5000)
    ap.add_argument("--fashion-queries", type=int, default=1000)
    ap.add_argument("--copies", type=int, default=500)
    ap.add_argument("--photo-queries", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--samples",
        default=None,
        metavar="SEEDS",
        help="also the fashion copies top-10 of the main settings over several samples of"
        " copies (seeds such as 0,1,2,3), with the gain over avg pooled over all of them",
    )
    ap.add_argument(
        "--whitening-study",
        action="store_true",
        help="also rows of R-MAC with plain PCA-whitening reduced to 64-512 dimensions",
    )
    args = ap.parse_args()

    bb = EfficientNetLite0(224, pooling="gem", scales=P.MULTI_SCALES)
    # the avg row must be today's default backbone, and the flip rows what --flip embeds:
    # check on a few images
    ref = EfficientNetLite0(224)
    photo_db, photo_q, photo_src = photo_set(args.seed, args.photo_queries)
    b = bb.batch(photo_db[:4])
    m, _ = bb.feature_maps(b)
    assert np.allclose(P.avg(m[0]), ref.embed(photo_db[:4]), atol=1e-4)
    mm, _ = bb.feature_maps(P.mirrored(b))
    plain, mirror = (P.combine_scales([P.gem(x) for x in y]) for y in (m, mm))
    want = flipped(plain, mirror, True)
    got = EfficientNetLite0(224, pooling="gem", scales=P.MULTI_SCALES, flip=True).embed(b)
    assert np.allclose(want, got, atol=1e-5)
    got = EfficientNetLite0(224, pooling="gem", scales=P.MULTI_SCALES, flip=True, power=0.5)
    assert np.allclose(P.power_normalise(want, 0.5), got.embed(b), atol=1e-5)

    fm = load_idx(FASHION, "fashion-mnist")
    train, test = fm["train"], fm["test"]
    f_db = [train.load(i) for i in range(args.fashion_db)]
    f_q = [test.load(i) for i in range(args.fashion_queries)]
    src, f_copies = fashion_copies(f_db, args.copies, args.seed)

    tag = f"s{args.seed}"
    sets = {
        "photo_db": (photo_db, f"photos-db-{tag}"),
        "photo_q": (photo_q, f"photos-q-{args.photo_queries}-{tag}"),
        "f_db": (f_db, "fashion-train"),
        "f_q": (f_q, "fashion-test"),
        "f_copies": (f_copies, f"fashion-copies-{args.copies}-{tag}"),
    }
    plain = {k: pooled(bb, ims, t) for k, (ims, t) in sets.items()}
    mirror = {k: pooled(bb, ims, t, mirror=True) for k, (ims, t) in sets.items()}
    feats = {
        k: {
            **{(p, ms, False): v for (p, ms), v in plain[k].items()},
            **{(p, ms, True): flipped(v, mirror[k][p, ms], ms) for (p, ms), v in plain[k].items()},
        }
        for k in sets
    }
    print(
        f"pooling benchmark: EfficientNet-Lite0 224 px; photos {len(photo_db)} db /"
        f" {len(photo_q)} copies; fashion-mnist {args.fashion_db} train db, {args.copies}"
        f" copies, {args.fashion_queries} test queries (category mAP)"
    )
    ql, dl = test.labels[: args.fashion_queries], train.labels[: args.fashion_db]
    base: list[np.ndarray] = []
    base_hits: list[np.ndarray] = []

    def row(
        name: str, p: str, ms: bool, make: Callable, flip: bool = False, power: float = 1.0
    ) -> None:
        k = (p, ms, flip)

        def f(key: str) -> np.ndarray:  # --power: on the pooled descriptor, before the index
            x = feats[key][k]
            return x if power == 1.0 else P.power_normalise(x, power)

        t = make(f("photo_db"))
        p1, p10 = source_rates(t(f("photo_db")), t(f("photo_q")), photo_src)
        t = make(f("f_db"))
        db, fq = t(f("f_db")), t(f("f_q"))
        crank = source_ranks(db, t(f("f_copies")), src)
        c1, c10 = float((crank == 0).mean()), float((crank < 10).mean())
        hits = 100.0 * (crank < 10)
        base_hits.append(base_hits[0] if base_hits else hits)
        r = evaluate_retrieval(
            fq, db, ql, dl, precision_at=(), recall_at=(), map_at_r=False, pr_points=0,
            pk_curve=(), progress=False,
        )  # fmt: skip
        aps = query_aps(fq, db, ql, dl)
        base.append(base[0] if base else aps)
        print(
            f"| {name} | {'1, 1/sqrt2, 1/2' if ms else '1'} | {'yes' if flip else 'no'}"
            f" | {100 * p1:.1f}% | {100 * p10:.1f}%"
            f" | {100 * c1:.1f}% | {100 * c10:.1f}%"
            f" | {diff_interval(hits - base_hits[0], points=True)}"
            f" | {r['map']:.4f} | {diff_interval(aps - base[0])} |",
            flush=True,
        )

    head = "| pooling | scales | flip | photos top-1 | photos top-10 | fashion copies top-1 |"
    print(
        head + " fashion copies top-10 | copies top-10 vs avg, points [95%] | fashion mAP |"
        " mAP vs avg [95%] |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    variants = [("avg", False), ("gem", False), ("rmac", True), ("rmac", False)]
    names = {"gem4": "gem, p = 4 (study)"}
    for flip in (False, True):
        for ms in (False, True):
            for p, white in variants:
                if flip and white:  # the whitened R-MAC lost category mAP: no flip rows
                    continue
                name = p + (
                    " (PCA-whitened)" if white else " (not whitened)" if p == "rmac" else ""
                )
                row(name, p, ms, lambda db, w=white: index_view(db, w), flip)
    for flip in (False, True):
        for ms in (False, True):
            row(names["gem4"], "gem4", ms, lambda db: index_view(db, False), flip)
    # --power 0.5 (the signed square root, Perronnin et al. 2010) of the unwhitened poolings
    for flip in (False, True):
        for ms in (False, True):
            for p in ("gem", "rmac"):
                name = p + (" (not whitened)" if p == "rmac" else "") + ", power 0.5"
                row(name, p, ms, lambda db: index_view(db, False), flip, 0.5)
    if args.whitening_study:
        for ms in (False, True):
            for dims in (64, 128, 256, 512):
                row(f"rmac, PCA-whitened to {dims} dims", "rmac", ms, pca_whitening(dims), False)
    if args.samples:
        samples_table(bb, f_db, feats["f_db"], args, [int(v) for v in args.samples.split(",")])
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The sweep that chose METRIC_RECIPE (cbir.train.config): a residual head trained as
`cbir train` trains it (triplet + batch-hard, exhaustive batches of 256, Adam lr 1e-4,
cosine schedule, similarity distillation), evaluated all-vs-all after some epochs of one
schedule (early-stopping points), with the evaluated images centred on their own mean
(the collection centring of `--center collection`, as the frozen row is centred), with
``--reduce collection`` reduced to ``--dim`` on the evaluated outputs' principal axes (the
head then stays 1280-d, from ``--init identity``), and with each ``--spectral`` power of the collection's spectral weighting (`--spectral`,
:func:`cbir.heads.base.spectral_weighting`, fitted on the evaluated images' outputs).

``--validate``: fit on seen classes 0-2, query seen classes 3-4 of the training split
(the choice is made here; the test split is not read); ``--fit-classes 2``: fit on 0-1,
query 2-4 (three held-out classes). Without it: fit on classes 0-4,
query the unseen classes 5-9 of the test split (reported, never chosen on).
``--closed-set``: the seen-classes protocol's validation: 1,000 training images of each
class held out as queries, the other 50,000 training images the training set and the
database (mAP@all as the `fashion-mnist` protocol; its test split is not read).

    python benchmarks/metric_recipe.py [--size 224] [--validate | --closed-set]
        [--init pca pca-whiten] [--distill 1.0] [--lr 1e-4] [--hidden 1024]
        [--epochs 2,5,10] [--spectral 0,0.5,1] [--reduce collection --init identity]

Backbone features are cached (``$CBIR_CACHE/features``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from cbir.backbones.cache import dataset_features
from cbir.data.registry import open_dataset
from cbir.eval.metrics import evaluate_retrieval
from cbir.eval.protocols import FASHION_SIZE
from cbir.heads.base import apply_weighting, l2_normalize, spectral_weighting
from cbir.heads.residual import ResidualHead
from cbir.losses.metric import get_metric_loss, get_miner
from cbir.losses.metric.distill import SimilarityDistillation
from cbir.samplers import make_sampler
from cbir.train.loop import lr_factor


def all_vs_all(z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(Recall@1, MAP@R) of unit rows of ``z`` querying each other."""
    z = l2_normalize(z.astype(np.float32))
    m = evaluate_retrieval(z, z, y, y, exclude_self=True, precision_at=(), progress=False)
    return round(float(m["recall@1"]), 4), round(float(m["map@r"]), 4)


def fitted_map(
    z: np.ndarray, power: float, keep: int | None = None
) -> Callable[[np.ndarray], np.ndarray]:
    """The spectral weighting of power ``power`` fitted on ``z`` (0: none), reduced to its
    top ``keep`` principal axes (``--reduce collection``), as a function of rows."""
    if not power and keep is None:
        return lambda v: v
    w = spectral_weighting(z, power, keep=keep)
    return lambda v: apply_weighting(v, w)


def weighted(z: np.ndarray, power: float, keep: int | None = None) -> np.ndarray:
    """``z`` under :func:`fitted_map` fitted on ``z`` itself."""
    return fitted_map(z, power, keep)(z)


def query_database(q: np.ndarray, yq: np.ndarray, d: np.ndarray, yd: np.ndarray) -> tuple:
    """(mAP, Recall@1, MAP@R) of unit rows of ``q`` searching those of ``d``."""
    q, d = l2_normalize(q.astype(np.float32)), l2_normalize(d.astype(np.float32))
    m = evaluate_retrieval(q, d, yq, yd, precision_at=(), progress=False)
    return tuple(round(float(m[k]), 4) for k in ("map", "recall@1", "map@r"))


def run(
    x: np.ndarray,
    y: np.ndarray,
    figures: Callable[[Callable[[np.ndarray], np.ndarray]], list],
    init: str,
    distill: float,
    dim: int,
    evals: tuple[int, ...],
    seed: int = 0,
    lr: float = 1e-4,
    hidden: tuple[int, ...] = (),
) -> dict[int, list]:
    """Train on ``x, y``; ``figures(embed)`` after each of ``evals`` epochs, ``embed``
    mapping centred features to the head's outputs (``dim`` wide: with ``--reduce
    collection`` the feature dimension, reduced by ``figures``)."""
    torch.manual_seed(seed)
    xc = torch.from_numpy(x - x.mean(0))
    head = ResidualHead(x.shape[1], dim, list(hidden))
    head.initialise(init, torch.from_numpy(x))
    loss_fn = get_metric_loss("triplet", dim, int(y.max()) + 1)
    miner = get_miner("batch-hard")
    dist = SimilarityDistillation(distill)
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=1e-5)
    sampler = make_sampler("exhaustive", y, 256, seed=seed)
    total = int(np.ceil(len(x) / 256)) * max(evals)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor("cosine", s, total, 200))
    yt = torch.from_numpy(y)

    def embed(features: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return head(torch.from_numpy(np.ascontiguousarray(features, np.float32))).numpy()

    def now() -> list:
        head.eval()
        out = figures(embed)
        head.train()
        return out

    out = {0: now()}
    for epoch in range(1, max(evals) + 1):
        for b in sampler.epoch(epoch):
            it = torch.from_numpy(np.asarray(b))
            u = head(xc[it])
            loss = loss_fn(u, yt[it], miner(u, yt[it]))
            if distill > 0:
                loss = loss + dist(u, xc[it])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if epoch in evals:
            out[epoch] = now()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=FASHION_SIZE)
    ap.add_argument("--validate", action="store_true", help="fit 0-2, query 3-4 (seen classes)")
    ap.add_argument(
        "--fit-classes",
        type=int,
        default=3,
        help="--validate: fit on seen classes 0..N-1, query classes N..4 (default 3: 0-2 / 3-4)",
    )
    ap.add_argument(
        "--closed-set",
        action="store_true",
        help="the seen-classes protocol's validation: 1,000 training images per class held out"
        " as queries, the other 50,000 the training set and database",
    )
    ap.add_argument("--init", nargs="+", default=["pca", "pca-whiten"])
    ap.add_argument("--distill", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--hidden", default="", help="hidden widths of the residual branch")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--epochs", default="2,5,10", help="evaluate after these epochs")
    ap.add_argument("--spectral", default="0", help="spectral weighting powers to evaluate")
    ap.add_argument(
        "--reduce",
        choices=["head", "collection"],
        default="head",
        help="collection: the head stays 1280-d (init identity) and the evaluated outputs are"
        " reduced to --dim on their own principal axes, as `cbir train --reduce collection`",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    ds = open_dataset("fashion-mnist")
    tr, te = ds["train"], ds["test"]
    xtr = np.asarray(dataset_features(tr, size=args.size, progress=False), np.float32)
    ytr = np.asarray(tr.labels)
    powers = tuple(float(v) for v in args.spectral.split(","))
    keep = args.dim if args.reduce == "collection" else None
    width = xtr.shape[1] if keep else args.dim
    frozen_name = "frozen (1280-d, centred" + (f", collection PCA-{keep})" if keep else ")")
    hidden = tuple(int(v) for v in args.hidden.split(",") if v)
    if args.closed_set:
        rng = np.random.default_rng(0)
        held = np.concatenate(
            [rng.choice(np.flatnonzero(ytr == c), 1000, replace=False) for c in range(10)]
        )
        rest = np.setdiff1d(np.arange(len(ytr)), held)
        x, y, q, yq = xtr[rest], ytr[rest], xtr[held], ytr[held]
        mean = x.mean(0)  # the collection (database) mean, as --center collection fits it

        def figures(embed: Callable[[np.ndarray], np.ndarray]) -> list:
            zq, zd = embed(q - mean), embed(x - mean)
            out = []
            for p in powers:
                f = fitted_map(zd, p, keep)
                out.append(query_database(f(zq), yq, f(zd), y))
            return out

        print(f"{args.size} px, {len(x)} training images = database, {len(q)} held-out queries")
        print(f"spectral powers {powers}: each figure is a list, one (mAP, R@1, MAP@R) per power")
        print(f"{frozen_name:<32} {figures(lambda z: z)}")
    else:
        if args.validate:
            k = args.fit_classes
            if not 1 <= k <= 3:
                ap.error("--fit-classes is 1, 2 or 3 (at least two seen classes are queried)")
            x, y = xtr[ytr < k], ytr[ytr < k]
            e, ye = xtr[(ytr >= k) & (ytr < 5)], ytr[(ytr >= k) & (ytr < 5)]
        else:
            xte = np.asarray(dataset_features(te, size=args.size, progress=False), np.float32)
            yte = np.asarray(te.labels)
            x, y, e, ye = xtr[ytr < 5], ytr[ytr < 5], xte[yte >= 5], yte[yte >= 5]
        ec = e - e.mean(0)

        def figures(embed: Callable[[np.ndarray], np.ndarray]) -> list:
            z = embed(ec)
            return [all_vs_all(weighted(z, p, keep), ye) for p in powers]

        where = (
            f"seen classes {args.fit_classes}-4 (validation)"
            if args.validate
            else "unseen classes 5-9 (test)"
        )
        print(f"{args.size} px, {len(x)} training images, {len(e)} queries of {where}")
        print(f"spectral powers {powers}: each figure is a list, one (R@1, MAP@R) per power")
        if keep:  # the rule's reference: the frozen 1280-d features, unweighted
            print(f"{'frozen (1280-d, centred)':<32} {all_vs_all(ec, ye)}")
        print(f"{frozen_name:<32} {figures(lambda z: z)}")
    evals = tuple(int(v) for v in args.epochs.split(","))
    for init in args.init:
        t = time.perf_counter()
        r = run(x, y, figures, init, args.distill, width, evals, lr=args.lr, hidden=hidden)
        name = f"{init}, distill {args.distill}, lr {args.lr}, hidden {list(hidden)}"
        name += ", reduce collection" if keep else ""
        print(f"{name:<32} {r} {time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    main()

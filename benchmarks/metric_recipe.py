"""The sweep that chose METRIC_RECIPE (cbir.train.config): a residual head trained as
`cbir train` trains it (triplet + batch-hard, exhaustive batches of 256, Adam lr 1e-4,
cosine schedule, similarity distillation), evaluated all-vs-all after some epochs of one
schedule (early-stopping points), with the evaluated images centred on their own mean
(the collection centring of `--center collection`, as the frozen row is centred).

``--validate``: fit on seen classes 0-2, query seen classes 3-4 of the training split
(the choice is made here; the test split is not read). Without it: fit on classes 0-4,
query the unseen classes 5-9 of the test split (reported, never chosen on).

    python benchmarks/metric_recipe.py [--size 64] [--validate] [--init pca pca-whiten]
        [--distill 1.0] [--epochs 2,5,10]

Backbone features are cached (``$CBIR_CACHE/features``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from cbir.backbones.cache import dataset_features
from cbir.data.registry import open_dataset
from cbir.eval.metrics import evaluate_retrieval
from cbir.heads.base import l2_normalize
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


def run(
    x: np.ndarray,
    y: np.ndarray,
    e: np.ndarray,
    ye: np.ndarray,
    init: str,
    distill: float,
    dim: int,
    evals: tuple[int, ...],
    seed: int = 0,
) -> dict[int, tuple[float, float]]:
    """Train on ``x, y``; figures on ``e`` (centred on its own mean) after each of ``evals``."""
    torch.manual_seed(seed)
    xc = torch.from_numpy(x - x.mean(0))
    ec = torch.from_numpy(e - e.mean(0))
    head = ResidualHead(x.shape[1], dim)
    head.initialise(init, torch.from_numpy(x))
    loss_fn = get_metric_loss("triplet", dim, int(y.max()) + 1)
    miner = get_miner("batch-hard")
    dist = SimilarityDistillation(distill)
    opt = torch.optim.Adam(head.parameters(), lr=1e-4, weight_decay=1e-5)
    sampler = make_sampler("exhaustive", y, 256, seed=seed)
    total = int(np.ceil(len(x) / 256)) * max(evals)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor("cosine", s, total, 200))
    yt = torch.from_numpy(y)

    def figures() -> tuple[float, float]:
        head.eval()
        with torch.no_grad():
            z = head(ec).numpy()
        head.train()
        return all_vs_all(z, ye)

    out = {0: figures()}
    for epoch in range(1, max(evals) + 1):
        for b in sampler.epoch(epoch):
            it = torch.from_numpy(np.asarray(b))
            u = head(xc[it])
            loss = loss_fn(u, yt[it], miner(u, yt[it])) + dist(u, xc[it])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if epoch in evals:
            out[epoch] = figures()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--validate", action="store_true", help="fit 0-2, query 3-4 (seen classes)")
    ap.add_argument("--init", nargs="+", default=["pca", "pca-whiten"])
    ap.add_argument("--distill", type=float, default=1.0)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--epochs", default="2,5,10", help="evaluate after these epochs")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ds = open_dataset("fashion-mnist")
    tr, te = ds["train"], ds["test"]
    xtr = np.asarray(dataset_features(tr, size=args.size, progress=False), np.float32)
    ytr = np.asarray(tr.labels)
    if args.validate:
        x, y = xtr[ytr < 3], ytr[ytr < 3]
        e, ye = xtr[(ytr >= 3) & (ytr < 5)], ytr[(ytr >= 3) & (ytr < 5)]
    else:
        xte = np.asarray(dataset_features(te, size=args.size, progress=False), np.float32)
        yte = np.asarray(te.labels)
        x, y, e, ye = xtr[ytr < 5], ytr[ytr < 5], xte[yte >= 5], yte[yte >= 5]
    where = "seen classes 3-4 (validation)" if args.validate else "unseen classes 5-9 (test)"
    print(f"{args.size} px, {len(x)} training images, {len(e)} queries of {where}")
    print(f"{'frozen (1280-d, centred)':<32} R@1, MAP@R {all_vs_all(e - e.mean(0), ye)}")
    evals = tuple(int(v) for v in args.epochs.split(","))
    for init in args.init:
        t = time.perf_counter()
        r = run(x, y, e, ye, init, args.distill, args.dim, evals)
        print(f"{init + ', distill ' + str(args.distill):<32} {r} {time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    main()

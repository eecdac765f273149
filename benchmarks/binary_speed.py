"""Speed of the binary indexes on 1M learned 64-bit codes, against raw faiss.

Data: the 64-bit codes a trained hashing model gives Fashion-MNIST's 60,000 training
images, replicated to ``--n`` (1,000,000) codes: copy 0 of each code is the code itself,
every further copy flips each bit independently with probability ``--flip``, so the
codes cluster as learned codes do (classes are tight groups of near-identical codes);
queries: the codes of ``--queries`` (1,000) test images. Exact k=10 (``-k``).

For every index: q/s (the 1,000 queries in one call, best of ``--repeat``), speed-up
over faiss ``IndexBinaryFlat`` (the peer, called directly, same run, same thread
count), recall@10 against the exact answer (tie-aware: a result whose true distance
ties with the exact 10th distance counts) and bytes per image. ``--threads`` sets
faiss's OpenMP threads and numba's threads alike.

    python benchmarks/binary_speed.py [--model RUN_DIR] [--n 1000000] [--flip 0.03]
        [--threads 1] [--mih 2,3,4,5] [--skip-hnsw]

Without ``--model`` it first trains a CSQ head (64 bits, 10 epochs) on the cached
frozen-backbone features of the training images (about a minute).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable

import faiss
import numpy as np

from cbir.codes.bits import popcount
from cbir.index.binary_index import BinaryIndex, make_binary_index


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def learned_codes(model: str | None, bits: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(train codes, test codes, description) of a trained hashing model."""
    from cbir.backbones.cache import dataset_features
    from cbir.eval.protocols import resolve
    from cbir.heads.learned import LearnedTransform

    if model is None:
        from cbir.train.trainer import make_config, train

        model = tempfile.mkdtemp(prefix="cbir-binary-speed-")
        log(f"training a CSQ {bits}-bit head into {model}")
        cfg = make_config(
            dataset="fashion-mnist", method="csq", bits=bits, epochs=10, eval_every=0, tsne_points=0
        )
        train(cfg, model, progress=False, final_eval=False)
    t = LearnedTransform.from_path(model)
    if t.kind != "binary" or t.dim != bits:
        raise SystemExit(f"{model}: a {t.kind} model of {t.dim} dims, not {bits}-bit codes")
    _, _, splits = resolve("fashion-mnist")
    size = t.backbone["preprocess"]["size"]

    def feats(images) -> np.ndarray:
        return np.asarray(
            dataset_features(images, size=size, progress=False, weights=t.backbone_weights)
        )

    return t(feats(splits.train)), t(feats(splits.query)), f"{t.method} {bits} bits from {model}"


def replicate(codes: np.ndarray, n: int, flip: float, seed: int = 0) -> np.ndarray:
    """``n`` codes: the originals, then copies with each bit flipped with probability ``flip``."""
    rng = np.random.default_rng(seed)
    reps = -(-n // len(codes))
    out = np.tile(codes, (reps, 1))[:n].copy()
    bits = codes.shape[1] * 8
    for a in range(len(codes), n, 1 << 17):  # in chunks: (chunk, bits) booleans
        b = min(n, a + (1 << 17))
        noise = np.packbits(rng.random((b - a, bits)) < flip, axis=1, bitorder="little")
        out[a:b] ^= noise
    return out


def hamming(q: np.ndarray, db: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """True distances ``(nq, k)`` of the returned ids (-1: a large value)."""
    safe = np.where(ids < 0, 0, ids)
    d = popcount(db[safe] ^ q[:, None, :]).sum(axis=2, dtype=np.int64)
    return np.where(ids < 0, 1 << 30, d)


def recall(q: np.ndarray, db: np.ndarray, ids: np.ndarray, kth: np.ndarray) -> float:
    """Tie-aware recall@k: returned ids whose true distance is at most the exact k-th."""
    d = hamming(q, db, ids)
    return float(np.minimum((d <= kth[:, None]).sum(1), ids.shape[1]).mean() / ids.shape[1])


def best_time(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    out, best = None, float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, metavar="RUN_DIR", help="a trained 64-bit hashing run")
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--flip", type=float, default=0.03, help="bit-flip probability of the copies")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--mih", default="2,3,4,5", help="MIH substring counts m to try (and the default m)"
    )
    ap.add_argument("--ivf", default="BIVF1024,nprobe=1;BIVF1024,nprobe=8;BIVF1024,nprobe=32")
    ap.add_argument("--hnsw", default="BHNSW32,ef=16;BHNSW32,ef=64;BHNSW32,ef=256")
    ap.add_argument("--skip-hnsw", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import numba

    faiss.omp_set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    base, test, desc = learned_codes(args.model, args.bits)
    db = replicate(base, args.n, args.flip, args.seed)
    qi = np.sort(np.random.default_rng(args.seed).choice(len(test), args.queries, replace=False))
    q = np.ascontiguousarray(test[qi])
    ids = np.arange(args.n, dtype=np.int64)
    k = args.k

    flat = faiss.IndexBinaryFlat(args.bits)
    flat.add(db)
    t_peer, (D, I) = best_time(lambda: flat.search(q, k), args.repeat)
    kth = D[:, -1].astype(np.int64)
    peer_qps = len(q) / t_peer
    uniq = len(np.unique(base.view(np.uint64) if args.bits == 64 else base, axis=0))
    print(
        f"codes: {desc}; {len(base):,} training codes ({uniq:,} distinct) -> {args.n:,} "
        f"(copies flip each bit with p={args.flip}); {len(q):,} test-image queries; exact k={k}"
    )
    print(
        f"exact 10-NN distances of the queries: mean d1 {D[:, 0].mean():.2f}, mean d{k} {kth.mean():.2f}, "
        f"max d{k} {kth.max()}; threads: {args.threads} (faiss OpenMP and numba)"
    )
    print(
        f"{'index':<24}{'q/s':>10}{'x faiss flat':>14}{'recall@10':>11}{'bytes/image':>13}{'build s':>9}"
    )
    nbytes = faiss.serialize_index_binary(flat).size
    print(
        f"{'faiss IndexBinaryFlat':<24}{peer_qps:>10.0f}{1.0:>14.2f}{1.0:>11.4f}{nbytes / args.n:>13.1f}{'':>9}",
        flush=True,
    )

    def row(name: str, index: BinaryIndex, build: float) -> None:
        search = lambda: index.search(q, k)  # noqa: E731
        search()  # warm-up (numba compiles once)
        t, (_, got) = best_time(search, args.repeat)
        r = recall(q, db, got, kth)
        qps = len(q) / t
        print(
            f"{name:<24}{qps:>10.0f}{qps / peer_qps:>14.2f}{r:>11.4f}{index.nbytes() / args.n:>13.1f}{build:>9.1f}",
            flush=True,
        )

    def build(spec: str) -> tuple[BinaryIndex, float]:
        t = time.perf_counter()
        index = make_binary_index(spec, args.bits)
        index.train(
            db[np.random.default_rng(1).choice(args.n, min(args.n, 200_000), replace=False)]
        )
        index.add_with_ids(db, ids)
        return index, time.perf_counter() - t

    index, t = build("BFlat")
    row("BFlat", index, t)
    del index
    for m in [None, *[int(x) for x in args.mih.split(",") if x]]:
        spec = "MIH" if m is None else f"MIH{m}"
        index, t = build(spec)
        row(f"{spec} (m={index.mih.m})", index, t)
        del index
    for spec in args.ivf.split(";"):
        index, t = build(spec)
        row(spec, index, t)
    if not args.skip_hnsw:
        faiss.omp_set_num_threads(os.cpu_count() or 1)  # build on every core
        index, t = build(args.hnsw.split(";")[0])
        faiss.omp_set_num_threads(args.threads)
        inner = faiss.downcast_IndexBinary(index.inner)
        for spec in args.hnsw.split(";"):
            inner.hnsw.efSearch = int(spec.split("ef=")[1])
            index.spec = spec
            row(spec, index, t)


if __name__ == "__main__":
    main()

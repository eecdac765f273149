"""Bytes per image and queries/s per core of each index type, on real backbone features.

The numbers docs/scaling.md plans 100M and 1B images with. Data: EfficientNet-Lite0
features (224 px, 1280-d, L2-normalised) of Fashion-MNIST's 60,000 training images as
the database and 1,000 test images as queries (the feature cache makes the features
once; the first run embeds 61,000 images). For each index type it prints:

  * bytes/image: the slope of the serialized index size between N/2 and N vectors
    (fixed parts, e.g. IVF centroids, are printed apart as "fixed MB");
  * q/s per core, faiss on one thread (``omp_set_num_threads(1)``), k=10, search parameters
    as cbir sets them (nprobe 32, efSearch 64): the 1,000 queries in one call ("batch":
    Flat then runs as a matrix product) and one query per call ("1-by-1", what an online
    service sees);
  * recall@10 against exact (Flat) search, for the approximate types;
  * vectors or codes scanned per query and ns per scanned one (q/s at another size:
    about 1e9 / (scanned * ns); Flat scans N, IVF nlist + nprobe * N / nlist).

Binary rows use LSH codes (random hyperplanes) of the same features; a learned hash has
the same size and speed. It also prints the embedded store's own bytes/image (feature
segment + SQLite row) measured by committing rows with real features through IndexStore.

    python benchmarks/scaling_measure.py [--n 60000] [--queries 1000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

FASHION = Path("/usr/share/datasets/fashion-mnist")

FLOAT_TYPES = ["Flat", "HNSW32", "IVF256,Flat", "IVF256,SQ8", "IVF256,PQ64", "IVF256,PQ32"]
BINARY_BITS = [64, 128, 256]


def features(n: int, nq: int) -> tuple[np.ndarray, np.ndarray]:
    """(database, queries): unit-norm real features of Fashion-MNIST train / test."""
    from cbir.backbones.cache import dataset_features
    from cbir.data.idx import load_idx
    from cbir.heads.transform import l2_normalize

    ds = load_idx(FASHION, "fashion-mnist")
    db = np.asarray(dataset_features(ds.splits["train"], size=224, progress=False)[:n])
    q = np.asarray(dataset_features(ds.splits["test"], size=224, progress=False)[:nq])
    return l2_normalize(db), l2_normalize(q)


def scanned(index, n: int) -> float | None:
    """Vectors or codes one query compares with (None for HNSW: a graph walk)."""
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        ivf = None
    if ivf is not None:
        return ivf.nlist + ivf.nprobe * n / ivf.nlist  # centroids + the probed lists
    inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else index
    return None if hasattr(inner, "hnsw") else n


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def serialized_size(index) -> int:
    if isinstance(index, faiss.IndexBinary):
        return int(faiss.serialize_index_binary(index).size)
    return int(faiss.serialize_index(index).size)


def timed_search(
    index, q: np.ndarray, k: int = 10, single: int = 200
) -> tuple[float, float, np.ndarray]:
    """(q/s for the whole batch in one call, q/s one query per call, ids) on one thread."""
    index.search(q[:10], k)  # warm-up
    t = time.perf_counter()
    _, ids = index.search(q, k)
    batched = len(q) / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(min(single, len(q))):
        index.search(q[i : i + 1], k)
    return batched, min(single, len(q)) / (time.perf_counter() - t), ids


def recall(ids: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(ids, exact, strict=True)]))


def float_rows(db: np.ndarray, q: np.ndarray, exact: np.ndarray) -> list[tuple]:
    from cbir.index.faiss_index import make_float_index, set_search_params, train_if_needed

    rows = []
    n = len(db)
    ids = np.arange(n, dtype=np.int64)
    for spec in FLOAT_TYPES:
        sizes = []
        t_build = time.perf_counter()
        faiss.omp_set_num_threads(os.cpu_count() or 1)  # build on every core
        index = make_float_index(spec, db.shape[1])
        if "PQ" in spec:  # faiss's polysemous training only reorders codes; it takes minutes
            faiss.downcast_index(faiss.extract_index_ivf(index)).do_polysemous_training = False
        train_if_needed(index, db, spec)
        for a, b in ((0, n // 2), (n // 2, n)):
            index.add_with_ids(db[a:b], ids[a:b])
            sizes.append(serialized_size(index))
        t_build = time.perf_counter() - t_build
        per = (sizes[1] - sizes[0]) / (n - n // 2)
        fixed = sizes[1] - per * n
        set_search_params(index)
        faiss.omp_set_num_threads(1)
        qps, qps1, got = timed_search(index, q)
        rows.append((spec, per, fixed, qps, qps1, recall(got, exact), scanned(index, n), t_build))
        log(f"{spec}: built in {t_build:.0f} s, {qps:.0f} / {qps1:.0f} q/s/core")
    return rows


def binary_rows(db: np.ndarray, q: np.ndarray, exact: np.ndarray) -> list[tuple]:
    from cbir.unsupervised.lsh import LSH

    rows = []
    n = len(db)
    for bits in BINARY_BITS:
        lsh = LSH(bits, seed=0).fit(db)
        codes = np.packbits(lsh.transform(db) > 0, axis=1, bitorder="little")
        qc = np.packbits(lsh.transform(q) > 0, axis=1, bitorder="little")
        sizes = []
        index = faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(bits))
        for a, b in ((0, n // 2), (n // 2, n)):
            index.add_with_ids(codes[a:b], np.arange(a, b, dtype=np.int64))
            sizes.append(serialized_size(index))
        per = (sizes[1] - sizes[0]) / (n - n // 2)
        faiss.omp_set_num_threads(1)
        qps, qps1, got = timed_search(index, qc)
        rows.append(
            (
                f"BFlat {bits}-bit (LSH)",
                per,
                sizes[1] - per * n,
                qps,
                qps1,
                recall(got, exact),
                n,
                0.0,
            )
        )
    return rows


def store_bytes(db: np.ndarray, n: int = 20_000) -> tuple[float, float, float]:
    """(feature segment B, SQLite B) per image of the embedded IndexStore, and rows/s committed."""
    from cbir.index.store import IndexStore, NewImage

    rng = np.random.default_rng(0)
    tmp = Path(tempfile.mkdtemp(prefix="cbir-store-bytes-"))
    try:
        store = IndexStore.create(tmp / "idx", {"feature_dim": db.shape[1], "index_type": "Flat"})
        added = []
        for i in range(n):
            top5 = [
                [int(c), round(float(p), 4)]
                for c, p in zip(rng.integers(0, 1000, 5), rng.dirichlet(np.ones(5)), strict=True)
            ]
            added.append(
                NewImage(f"/data/photos/2024/{i % 12 + 1:02d}/IMG_{i:07d}.jpg", f"{rng.integers(2**63):064x}",
                         int(rng.integers(50_000, 5_000_000)), time.time_ns(), 4032, 3024, extra={"imagenet": top5})
            )  # fmt: skip
        t = time.perf_counter()
        store.commit(added, np.resize(db, (n, db.shape[1])))
        rate = n / (time.perf_counter() - t)
        store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        seg = sum(p.stat().st_size for p in (tmp / "idx").glob("features-*.npy"))
        db_size = (tmp / "idx" / "meta.sqlite").stat().st_size
        store.close()
        return seg / n, db_size / n, rate
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60_000, help="database vectors (at most 60,000)")
    ap.add_argument("--queries", type=int, default=1000)
    args = ap.parse_args()
    db, q = features(args.n, args.queries)
    faiss.omp_set_num_threads(1)
    flat = faiss.IndexFlatIP(db.shape[1])
    flat.add(db)
    _, exact = flat.search(q, 10)
    log("exact neighbours done")
    rows = float_rows(db, q, exact) + binary_rows(db, q, exact)
    seg, sql, rate = store_bytes(db)
    print(
        f"{len(db)} real 1280-d features (Fashion-MNIST train), {len(q)} queries, k=10, one thread"
    )
    print(
        f"{'index type':<22} {'B/image':>8} {'fixed MB':>9} {'q/s batch':>9} {'q/s 1-by-1':>10}"
        f" {'recall@10':>9} {'scanned/q':>9} {'ns/scan b':>9} {'ns/scan 1':>9} {'build s':>8}"
    )
    for spec, per, fixed, qps, qps1, rec, sc, tb in rows:
        sc_s, ns_b, ns_1 = (
            (f"{sc:.0f}", f"{1e9 / (qps * sc):.2f}", f"{1e9 / (qps1 * sc):.2f}")
            if sc
            else ("graph", "-", "-")
        )
        print(
            f"{spec:<22} {per:>8.1f} {fixed / 1e6:>9.2f} {qps:>9.1f} {qps1:>10.1f} {rec:>9.3f}"
            f" {sc_s:>9} {ns_b:>9} {ns_1:>9} {tb:>8.1f}"
        )
    print(f"embedded store per image: feature segment {seg:.0f} B + SQLite row {sql:.0f} B (path, sha256, size,"
          " mtime, size, top-5 classes)")  # fmt: skip
    print(f"embedded store commit (one writer, one transaction of 20,000 rows): {rate:.0f} rows/s")
    print("ids: faiss keeps 8 B/image for ids (IDMap2 / inverted lists): included above")


if __name__ == "__main__":
    main()

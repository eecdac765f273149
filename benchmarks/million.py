"""One machine, a million images: a 1,000,000-image index through cbir's own store.

What it builds: an index directory made by ``pipeline.create_or_open`` with a 64-bit ITQ
model (Gong & Lazebnik, CVPR 2011; ``cbir train --method itq``) as its transform, so the
store's own search index holds only binary codes in multi-index hashing (``--store-type
MIH``; Norouzi, Punjani, Fleet, CVPR 2012), and ``--feature-dtype`` (float16) feature
segments on disk, memory-mapped, for re-ranking and rebuilds. It is filled by
``IndexStore.commit`` in batches of ``--batch`` rows (one feature segment each, as
``cbir index`` commits), then ``vector_index.refresh`` builds the MIH index from the
segments. The rows: real EfficientNet-Lite0 features of Fashion-MNIST's 60,000 training
images (the feature cache, ``--size`` px: 64, because 224 px features of the full split
are not cached here and embedding them takes hours on 2 cores) repeated and perturbed by
seeded Gaussian noise (``--noise`` x each dimension's standard deviation, clipped at 0
like the ReLU6 features), under synthetic paths (``/synthetic/...``: no file exists, so
``cbir check`` lists them as missing files, which it reports but does not count as
damage).

What it measures (one table, plus ``OUT/million.json``):

* bytes on disk per image (segments, SQLite, the search index);
* a fresh process opening the index (``Searcher``) and answering a first query by image
  file (the backbone loaded and run), its RSS after the open;
* 1,000 new images, real Fashion-MNIST test images written as PNG, added end to end by
  ``cbir index FOLDER --index IDX`` (a subprocess: decoding, embedding, commit, the search
  index updated); then deleting 1,000 rows (``ops.delete_ids``, as the HTTP API does);
* ``cbir check IDX`` (a subprocess);
* search q/s and recall@10 (against exact float search over the same vectors, the frozen
  backbone centred as a new index is) of Flat, the store's MIH codes, ``--ivf-type``
  (IVF-PQ trained on ``--train-sample`` rows), MIH and IVF-PQ re-ranked by the exact
  cosine of their top ``--rerank-depth`` read from the float16 segments
  (``CodeKind.rescore``), and HNSW32, each built from the store's segments by
  ``vector_index.build`` (or the code kind) and freed before the next. HNSW32 is built on
  every row by default (241 s and ~5.4 GB at 1M here), or on the first ``--hnsw-rows``
  rows (its build time is then extrapolated linearly, a lower bound, and labelled so);
* the mAP cost of float16 features on the fashion-mnist protocol (frozen, centred).

    nice -n 10 python benchmarks/million.py [--rows 1000000] [--hnsw-rows N]
        [--itq RUN_DIR] [--out DIR] [--no-map]

``--itq``: a ``cbir train --dataset fashion-mnist --method itq --bits 64 --size 64`` run
(made by this script when missing).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np

FASHION = Path("/usr/share/datasets/fashion-mnist")
CACHE = Path(os.environ.get("CBIR_CACHE", Path.home() / ".cache" / "cbir")) / "million"
K = 10


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rss_mb(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cbir.cli", *args]


def fashion(size: int):
    """(train features, test features, test images, labels): real backbone features."""
    from cbir.backbones.cache import dataset_features
    from cbir.data.idx import load_idx

    ds = load_idx(FASHION, "fashion-mnist")
    tr, te = ds.splits["train"], ds.splits["test"]
    return (
        dataset_features(tr, size=size, progress=False),
        dataset_features(te, size=size, progress=False),
        te,
        (np.asarray(tr.labels), np.asarray(te.labels)),
    )


# ------------------------------------------------------------------------ build
def build_store(args, base: np.ndarray, out: dict) -> Path:
    from cbir.heads.learned import LearnedTransform
    from cbir.index import vector_index
    from cbir.index.store import NewImage
    from cbir.pipeline import create_or_open

    idx = Path(args.out) / "index"
    shutil.rmtree(idx, ignore_errors=True)
    store = create_or_open(
        idx,
        index_type=args.store_type,
        size=args.size,
        transform=LearnedTransform.from_path(args.itq),
        feature_dtype=args.feature_dtype,
    )
    store.lock()
    std = np.asarray(base, np.float32).std(0)
    t0, t_feat = time.perf_counter(), 0.0
    for start in range(0, args.rows, args.batch):
        n = min(args.batch, args.rows - start)
        t = time.perf_counter()
        rng = np.random.default_rng(args.seed + start)
        src = (np.arange(start, start + n) % len(base)).astype(np.int64)
        feats = np.asarray(base[src], np.float32)
        feats += rng.standard_normal(feats.shape, np.float32) * (args.noise * std)
        np.maximum(feats, 0, out=feats)
        t_feat += time.perf_counter() - t
        added = [
            NewImage(
                path=f"/synthetic/fashion-mnist-aug/{i:07d}.png",
                sha256=hashlib.sha256(b"synthetic %d" % i).hexdigest(),
                size=800,
                mtime_ns=0,
                width=28,
                height=28,
            )
            for i in range(start, start + n)
        ]
        store.commit(added, feats)
        del feats, added
        log(f"committed {start + n:,} rows ({rss_mb():.0f} MB RSS)")
    out["commit_s"] = time.perf_counter() - t0 - t_feat
    out["make_features_s"] = t_feat
    t = time.perf_counter()
    vector_index.refresh(store)
    out["store_index_build_s"] = time.perf_counter() - t
    store.close()
    log(f"store index {args.store_type} built in {out['store_index_build_s']:.0f} s")
    return idx


def disk(idx: Path) -> dict:
    parts = {"segments": 0, "sqlite": 0, "search index": 0, "other": 0}
    for p in idx.iterdir():
        if not p.is_file():
            continue
        key = (
            "segments"
            if p.name.startswith("features-")
            else "sqlite"
            if p.name.startswith("meta.sqlite")
            else "search index"
            if p.name.startswith("index-")
            else "other"
        )
        parts[key] += p.stat().st_size
    return parts


# ------------------------------------------------------------------ child: open
def child_open(idx: str, query: str) -> None:
    """Run in a fresh process: open the index, answer one query by file."""
    t0 = time.perf_counter()
    from cbir.search.searcher import Searcher

    s = Searcher(idx)
    t1 = time.perf_counter()
    rss_open = rss_mb()
    hits = s.search_file(query, k=K)
    t2 = time.perf_counter()
    print(
        json.dumps(
            {
                "open_s": t1 - t0,
                "first_query_s": t2 - t1,
                "rss_open_mb": rss_open,
                "rss_query_mb": rss_mb(),
                "hits": len(hits),
            }
        )
    )


def open_and_query(idx: Path, query: Path, out: dict) -> None:
    r = subprocess.run(
        [sys.executable, __file__, "--child-open", str(idx), str(query)],
        capture_output=True,
        text=True,
        check=True,
    )
    out["open"] = json.loads(r.stdout.strip().splitlines()[-1])


def write_pngs(images, first: int, n: int, folder: Path) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(first, first + n):
        img = images.load(i)
        (img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img))).save(
            folder / f"test-{i:05d}.png"
        )


def add_delete_check(idx: Path, images, out: dict) -> None:
    from cbir import ops
    from cbir.index.store import IndexStore

    folder = Path(args_out()) / "new-images"
    shutil.rmtree(folder, ignore_errors=True)
    write_pngs(images, 0, 1000, folder)
    t = time.perf_counter()
    r = subprocess.run(
        cli("index", str(folder), "--index", str(idx)), capture_output=True, text=True
    )
    out["add_1000_s"] = time.perf_counter() - t
    out["add_1000_out"] = (r.stdout + r.stderr).strip().splitlines()[-3:]
    if r.returncode:
        raise SystemExit(f"cbir index failed: {r.stderr}")
    store = IndexStore.open(idx)
    gone = [r[0] for r in store.conn.execute("SELECT id FROM images ORDER BY id LIMIT 1000")]
    store.close()
    t = time.perf_counter()
    deleted = ops.delete_ids(idx, gone)
    out["delete_1000_s"] = time.perf_counter() - t
    assert len(deleted) == 1000
    t = time.perf_counter()
    r = subprocess.run(cli("check", str(idx)), capture_output=True, text=True)
    out["check_s"] = time.perf_counter() - t
    out["check_rc"] = r.returncode
    out["check_out"] = (r.stdout + r.stderr).strip().splitlines()[:6]


_OUT = [""]


def args_out() -> str:
    return _OUT[0]


# --------------------------------------------------------------------- search
def timed(code, index, q, k: int, one_by_one_s: float = 20.0) -> tuple[float, float, np.ndarray]:
    """(q/s batch on every core, q/s one query per call on one core, ids of the batch)."""
    t = time.perf_counter()
    _, ids, _ = code.search(index, q, k)
    batch = len(q) / (time.perf_counter() - t)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        t, n = time.perf_counter(), 0
        while n < len(q) and time.perf_counter() - t < one_by_one_s:
            code.search(index, q[n : n + 1], k)
            n += 1
        single = n / (time.perf_counter() - t)
    finally:
        faiss.omp_set_num_threads(threads)
    return batch, single, ids


def recall(ids: np.ndarray, gt: np.ndarray) -> float:
    return float(np.mean([len(set(a[:K]) & set(b[:K])) / K for a, b in zip(ids, gt, strict=True)]))


def first_rows(store, limit: int) -> np.ndarray:
    """The features of the first ``limit`` rows (what cbir fits a centring mean on)."""
    parts, n = [], 0
    for _, feats in store.iter_features():
        parts.append(feats[: limit - n])
        n += len(parts[-1])
        if n >= limit:
            break
    return np.concatenate(parts)


def reranked(store, code, index, q, frozen, fq, depth: int) -> tuple[float, np.ndarray]:
    """(q/s one by one, ids): the index's top ``depth``, re-scored exactly by cosine of the
    stored (float16) features of just those ids (``CodeKind.rescore``)."""
    from cbir.codes.registry import code_kind

    fcode = code_kind("float")
    t, got = time.perf_counter(), []
    for i in range(len(q)):
        _, cand, _ = code.search(index, q[i : i + 1], depth)
        cand = cand[0][cand[0] >= 0]
        vecs = frozen(store.features(cand.tolist()))
        got.append(fcode.rescore(fq[i : i + 1], vecs, cand, K, fq.shape[1])[1][0])
    return len(q) / (time.perf_counter() - t), np.array(got)


def search_rows(idx: Path, qfeats: np.ndarray, args, out: dict) -> list[dict]:
    from cbir.codes.registry import code_kind
    from cbir.heads.frozen import FrozenTransform
    from cbir.index import vector_index
    from cbir.index.store import IndexStore

    store = IndexStore.open(idx)
    n = store.count()
    # the frozen backbone, centred on the first TRAIN_SAMPLE rows as a new cbir index is
    frozen = FrozenTransform(dim=qfeats.shape[1], center=True)
    frozen.fit(first_rows(store, vector_index.TRAIN_SAMPLE))
    fcode = code_kind(frozen)
    q = frozen(qfeats)
    rows: list[dict] = []

    def build(transform, index_type: str):
        t = time.perf_counter()
        index = vector_index.build(store, transform, index_type)
        code_kind(transform).tune(index)
        return index, time.perf_counter() - t

    def row(name, m, secs, batch, single, rec, note=None):
        rows.append(
            dict(
                index=name,
                n=m,
                build_s=secs,
                rss_mb=rss_mb(),
                qps_batch=batch,
                qps_1=single,
                recall=rec,
                note=note,
            )
        )
        log(f"{rows[-1]}")

    # Flat: exact, the reference of every recall below
    index, secs = build(frozen, "Flat")
    batch, single, gt = timed(fcode, index, q, K)
    row("Flat (exact), float32 vectors", n, secs, batch, single, 1.0)
    del index
    gc.collect()

    # the store's own index: 64-bit ITQ codes in MIH, as a reader loads it
    index, itq, _g = vector_index.load(store)
    bcode = code_kind(itq)
    bq = itq(qfeats)
    batch, single, ids = timed(bcode, index, bq, K)
    _, _, mdist = bcode.search(index, bq, K)
    bflat, _ = build(itq, "BFlat")
    _, _, hdist = bcode.search(bflat, bq, K)
    del bflat
    # the same k distances as the exact Hamming scan: an exact top-k (ties may differ)
    exact_h = float(np.mean(np.all(mdist == hdist, axis=1)))
    row(
        f"{args.store_type}, 64-bit ITQ codes (the store's index)",
        n,
        out["store_index_build_s"],
        batch,
        single,
        recall(ids, gt),
        f"exact Hamming top-{K} on {exact_h:.0%} of queries",
    )
    single, ids = reranked(store, bcode, index, bq, frozen, q, args.rerank_depth)
    row(
        f"{args.store_type} + re-rank top {args.rerank_depth} from {args.feature_dtype} segments",
        n,
        None,
        None,
        single,
        recall(ids, gt),
    )
    del index
    gc.collect()

    # IVF-PQ (trained on the first --train-sample rows), plain and re-ranked
    vector_index.TRAIN_SAMPLE = args.train_sample
    index, secs = build(frozen, args.ivf_type)
    batch, single, ids = timed(fcode, index, q, K)
    row(
        args.ivf_type,
        n,
        secs,
        batch,
        single,
        recall(ids, gt),
        f"trained on {min(args.train_sample, n):,} rows; nprobe 32",
    )
    single, ids = reranked(store, fcode, index, q, frozen, q, args.rerank_depth)
    row(
        f"{args.ivf_type} + re-rank top {args.rerank_depth} from {args.feature_dtype} segments",
        n,
        None,
        None,
        single,
        recall(ids, gt),
    )
    del index
    gc.collect()

    # HNSW32, on the first --hnsw-rows rows when fewer than all
    m = n if args.hnsw_rows is None else min(args.hnsw_rows, n)
    t = time.perf_counter()
    index = fcode.make("HNSW32", q.shape[1])
    ref = fcode.make("Flat", q.shape[1])
    done = 0
    for ids_, feats in store.iter_features():
        take = min(len(ids_), m - done)
        vecs = frozen(feats[:take])
        fcode.add(index, vecs, ids_[:take])
        if m < n:
            fcode.add(ref, vecs, ids_[:take])
        done += take
        if done >= m:
            break
    secs = time.perf_counter() - t
    fcode.tune(index)
    sgt = fcode.search(ref, q, K)[1] if m < n else gt
    del ref
    batch, single, ids = timed(fcode, index, q, K)
    note = None
    if m < n:
        note = (
            f"built on the first {m:,} rows, recall vs exact on them; build of {n:,}"
            f" extrapolated linearly: >= {secs * n / m:,.0f} s (a lower bound)"
        )
    row("HNSW32 (efSearch 64)", m, secs, batch, single, recall(ids, sgt), note)
    del index
    gc.collect()
    store.close()
    return rows


# ------------------------------------------------------------------------ mAP
def fp16_map(train, test, labels) -> dict:
    """fashion-mnist protocol, frozen centred: mAP with float32 vs float16 features."""
    from cbir.eval.protocols import default_protocol
    from cbir.eval.run import evaluate_features
    from cbir.heads.frozen import FrozenTransform

    proto = default_protocol("fashion-mnist")
    res = {}
    for name, dt in (("float32", np.float32), ("float16", np.float16)):
        db = np.asarray(np.asarray(train).astype(dt), np.float32)
        qq = np.asarray(np.asarray(test).astype(dt), np.float32)
        m = evaluate_features(
            FrozenTransform(dim=db.shape[1], center=True),
            qq,
            labels[1],
            db,
            labels[0],
            proto,
            progress=False,
            nmi=False,
        )
        res[name] = m["map"]
        log(f"mAP {name}: {m['map']:.5f}")
    return res


# ---------------------------------------------------------------------- table
def fmt(v, spec: str = ",.0f") -> str:
    return "–" if v is None else format(v, spec)


def print_table(args, out: dict) -> None:
    n = out["rows_after_build"]
    d = out["disk"]
    total = sum(d.values())
    print(
        f"\n{n:,} images, {args.feature_dtype} segments, store index {args.store_type},"
        f" features {args.size} px + noise {args.noise} std"
    )
    print("| measure | value |\n|---|---:|")
    print(
        f"| bytes on disk per image | {total / n:,.0f} (segments {d['segments'] / n:,.0f},"
        f" SQLite {d['sqlite'] / n:,.0f}, search index {d['search index'] / n:,.0f}) |"
    )
    print(f"| build: commit {n:,} rows (s) | {out['commit_s']:,.0f} |")
    print(
        f"| build: store search index {args.store_type} (s) | {out['store_index_build_s']:,.0f} |"
    )
    o = out["open"]
    print(f"| open (fresh process, Searcher) (s) | {o['open_s']:.2f} |")
    print(f"| RSS after open (MB) | {o['rss_open_mb']:,.0f} |")
    print(f"| first query by image file, backbone loaded (s) | {o['first_query_s']:.2f} |")
    print(f"| add 1,000 PNGs end to end, `cbir index` (s) | {out['add_1000_s']:.1f} |")
    print(f"| delete 1,000 (`ops.delete_ids`) (s) | {out['delete_1000_s']:.1f} |")
    print(f"| `cbir check` (s) | {out['check_s']:.1f} (exit {out['check_rc']}) |")
    print(f"| peak RSS of this benchmark (MB) | {out['peak_rss_mb']:,.0f} |")
    if "map" in out:
        m = out["map"]
        print(
            f"| fashion-mnist mAP, float32 / float16 features | {m['float32']:.4f} /"
            f" {m['float16']:.4f} |"
        )
    print(
        f"\nsearch, {args.queries} Fashion-MNIST test queries, k={K}, recall@{K} vs exact;"
        " batch: all queries in one call, 2 threads; 1-by-1: one per call, 1 thread"
    )
    print("| index | vectors | build s | RSS MB | q/s batch | q/s 1-by-1 | recall@10 | note |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in out["search"]:
        print(
            f"| {r['index']} | {r['n']:,} | {fmt(r['build_s'])} | {fmt(r['rss_mb'])} |"
            f" {fmt(r['qps_batch'], ',.1f')} | {fmt(r['qps_1'], ',.1f')} |"
            f" {r['recall']:.3f} | {r.get('note') or ''} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=100_000, help="rows per commit (segment)")
    ap.add_argument("--size", type=int, default=64, help="backbone input size of the features")
    ap.add_argument("--feature-dtype", default="float16", choices=("float16", "float32"))
    ap.add_argument("--store-type", default="MIH", help="the store's own index (ITQ codes)")
    ap.add_argument("--ivf-type", default="IVF256,PQ32")
    ap.add_argument("--train-sample", type=int, default=50_000, help="IVF-PQ training rows")
    ap.add_argument("--noise", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument(
        "--hnsw-rows", type=int, default=None, help="HNSW32 on the first N rows (default: all)"
    )
    ap.add_argument("--rerank-depth", type=int, default=100)
    ap.add_argument("--itq", default=str(CACHE / "itq64"))
    ap.add_argument("--out", default=str(CACHE))
    ap.add_argument("--no-map", action="store_true", help="skip the float16 mAP comparison")
    ap.add_argument("--child-open", nargs=2, metavar=("INDEX", "QUERY"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_open:
        child_open(*args.child_open)
        return
    _OUT[0] = args.out
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if not (Path(args.itq) / "model.pt").exists():
        log(f"training 64-bit ITQ into {args.itq}")
        subprocess.run(
            cli(
                "train",
                "--dataset",
                "fashion-mnist",
                "--method",
                "itq",
                "--bits",
                "64",
                "--size",
                str(args.size),
                "--out",
                args.itq,
            ),
            check=True,
            capture_output=True,
        )
    train, test, test_images, labels = fashion(args.size)
    out: dict = {"args": vars(args)}
    idx = build_store(args, train, out)
    out["disk"] = disk(idx)
    from cbir.index.store import IndexStore

    s = IndexStore.open(idx)
    out["rows_after_build"] = s.count()
    s.close()
    query = Path(args.out) / "query.png"
    write_pngs(test_images, 5000, 1, Path(args.out) / "q")
    shutil.copy(Path(args.out) / "q" / "test-05000.png", query)
    open_and_query(idx, query, out)
    log(f"open: {out['open']}")
    add_delete_check(idx, test_images, out)
    log(
        f"add {out['add_1000_s']:.1f} s, delete {out['delete_1000_s']:.1f} s, check {out['check_s']:.1f} s"
    )
    qfeats = np.asarray(test[2000 : 2000 + args.queries], np.float32)
    out["search"] = search_rows(idx, qfeats, args, out)
    out["peak_rss_mb"] = rss_mb("VmHWM")
    (Path(args.out) / "million.json").write_text(json.dumps(out, indent=1, default=str))
    if not args.no_map:
        out["map"] = fp16_map(train, test, labels)
    out["peak_rss_mb"] = rss_mb("VmHWM")
    (Path(args.out) / "million.json").write_text(json.dumps(out, indent=1, default=str))
    print_table(args, out)


if __name__ == "__main__":
    main()

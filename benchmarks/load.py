"""Bounded loopback load on `cbir serve` over a 100k-image index, against the raw peers.

    python benchmarks/load.py [--requests 10000] [--concurrency 8] [--workers 2]
        [--backbone efficientnet-lite0-int8] [--small N] [--concurrency 1,2,8]

The index: the 70,000 Fashion-MNIST images as PNG files plus 30,000 transformed copies
(:mod:`cbir_testing.collection`; built once under ``$CBIR_CACHE/load``, the copies by
``cbir index`` itself). The server runs in its own process (uvicorn); wrk keeps
``--concurrency`` requests in flight for ``--requests`` searches by id and then as many
searches by upload (each upload a new transformed copy of an indexed image, not in the
index). httpx then repeats a tenth of each with every answer checked: by id, the image
itself (or an exact duplicate) at rank 1; by upload, the image it was made from in the top
10. In the same run, the raw peers: faiss's search of the same index alone, and the
embedding alone (decode, preprocess, onnxruntime) one at a time and on every core.

Targets (issue 6): 0 errors; search by id p50 <= 5 ms; by upload p50 <= 40 ms.

``--backbone`` builds (and serves) the index with another backbone, e.g. the int8
``efficientnet-lite0-int8`` (the server embeds uploads with the index's backbone);
``--concurrency 1,2,8`` runs the loads at each number in flight. The upload breakdown: the
server's steps for one upload at a time, in this process, on the same index and uploads
(decode, preprocess, forward, search, answer built and serialised); the rest of the p50 at
1 in flight is HTTP, multipart parsing and the framework.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from cbir_testing.collection import (
    collection_name,
    default_root,
    encode,
    load_index,
    transformed,
    write_collection,
)
from cbir_testing.loadgen import (
    LoadResult,
    ServerProcess,
    id_request,
    run_load,
    run_wrk,
    upload_request,
    wrk_available,
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pct(a: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(a) * 1e3, q))


def faiss_alone(index_dir, ids: np.ndarray) -> dict:
    """The index's own faiss search, one query at a time on one thread, and its recall@10."""
    import faiss

    from cbir.index import vector_index
    from cbir.index.faiss_index import set_search_params
    from cbir.index.store import IndexStore

    store = IndexStore.open(index_dir)
    try:
        index, transform, _ = vector_index.load(store)
        cfg = store.config
        set_search_params(index, cfg.get("nprobe"), cfg.get("ef_search"))
        q = transform(store.features(ids.tolist()))
        faiss.omp_set_num_threads(1)
        times = []
        found = []
        for v in q:
            t0 = time.perf_counter()
            _, got = index.search(v[None], 10)
            times.append(time.perf_counter() - t0)
            found.append(got[0])
        # recall@10 against exact search of the same vectors, on a sample
        all_ids, feats = zip(*store.iter_features(), strict=True)
        all_ids, base = np.concatenate(all_ids), transform(np.concatenate(feats))
        sample = slice(0, min(500, len(q)))
        exact = all_ids[np.argsort(-(q[sample] @ base.T), axis=1)[:, :10]]
        recall = np.mean(
            [len(set(a) & set(b)) / 10 for a, b in zip(found[sample], exact, strict=True)]
        )
    finally:
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        store.close()
    return {
        "p50_ms": pct(times, 50),
        "p99_ms": pct(times, 99),
        "qps": len(times) / sum(times),
        "recall_at_10": float(recall),
        "n": len(times),
    }


def embedding_alone(index_dir, bodies: list[bytes], threads: int) -> dict:
    """Decode + preprocess + onnxruntime of uploads with the index's backbone: one at a
    time, and on every core."""
    from cbir.backbones.registry import backbone_for
    from cbir.data.images import decode
    from cbir.index.store import IndexStore

    store = IndexStore.open(index_dir)
    try:
        bb = backbone_for(store, threads=threads)
    finally:
        store.close()
    size = bb.preprocess.size

    def embed(data: bytes) -> float:
        t0 = time.perf_counter()
        bb.run(bb.preprocess(decode(data, "q", draft_size=size, reduce_to=size))[None])
        return time.perf_counter() - t0

    embed(bodies[0])
    one = [embed(b) for b in bodies]
    cores = os.cpu_count() or 1
    t0 = time.perf_counter()
    with ThreadPoolExecutor(cores) as pool:
        list(pool.map(embed, bodies))
    par_qps = len(bodies) / (time.perf_counter() - t0)
    return {
        "p50_ms": pct(one, 50),
        "p99_ms": pct(one, 99),
        "qps": len(one) / sum(one),
        "qps_all_cores": par_qps,
        "n": len(one),
        "backbone": bb.name,
    }


def upload_breakdown(index_dir, bodies: list[bytes], threads: int) -> dict[str, dict[str, float]]:
    """Each step the server takes for one upload, one upload at a time, run here through the
    service's own objects: decode, preprocess, forward, search and answer (faiss, the hits'
    rows, the pydantic answer: ``Service.search_out``), serialised to JSON. Wall p50 ms and mean CPU ms of this
    thread (onnxruntime with 1 thread runs in it): CPU time is what a shared machine does
    not inflate."""
    import hashlib

    from cbir.data.images import decode
    from cbir.service.schemas import json_response
    from cbir.service.service import Service

    svc = Service(
        index_dir, max_upload_bytes=1 << 26, max_k=100, thumb_size=128, embed_threads=threads
    )
    bb = svc.backbone
    size = bb.preprocess.size
    names = ("decode", "preprocess", "forward", "search + answer", "JSON")
    wall: dict[str, list[float]] = {k: [] for k in (*names, "sum")}
    cpu: dict[str, list[float]] = {k: [] for k in (*names, "sum")}
    clock = (time.perf_counter, time.thread_time)
    try:
        for i, data in enumerate(bodies):
            marks = [tuple(c() for c in clock)]
            img = decode(data, "q", draft_size=size, reduce_to=size)
            marks.append(tuple(c() for c in clock))
            x = bb.preprocess(img)[None]
            marks.append(tuple(c() for c in clock))
            f = bb.run(x)[0]
            marks.append(tuple(c() for c in clock))
            sha = hashlib.sha256(data).hexdigest()
            out = svc.search_out(f"sha256:{sha}", f, 10, None)
            marks.append(tuple(c() for c in clock))
            json_response(out)
            marks.append(tuple(c() for c in clock))
            if i == 0:
                continue  # warm-up
            for out, c in ((wall, 0), (cpu, 1)):
                for k, a, b in zip(names, marks, marks[1:], strict=False):
                    out[k].append(b[c] - a[c])
                out["sum"].append(marks[-1][c] - marks[0][c])
    finally:
        svc.searcher.close()
        svc.decoder.shutdown()
    return {
        "wall_p50_ms": {k: pct(v, 50) for k, v in wall.items()},
        "cpu_mean_ms": {k: 1e3 * float(np.mean(v)) for k, v in cpu.items()},
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=10_000, help="requests of each kind")
    p.add_argument("--concurrency", default="8", help="requests in flight; a list runs each: 1,2,8")
    p.add_argument("--workers", type=int, default=2, help="cbir serve --workers")
    p.add_argument("--embed-threads", type=int, default=1, help="cbir serve --embed-threads")
    p.add_argument("--index-type", default="HNSW32")
    p.add_argument(
        "--backbone",
        default=None,
        help="the index's backbone (e.g. efficientnet-lite0-int8; default efficientnet-lite0)",
    )
    p.add_argument(
        "--small",
        type=int,
        default=None,
        metavar="N",
        help="a smaller collection for a quick try: N test images + N/4 copies",
    )
    p.add_argument("--json", default=None, metavar="OUT.json")
    args = p.parse_args()
    levels = [int(c) for c in str(args.concurrency).split(",") if c.strip()]
    t_build = time.perf_counter()
    limit, copies = ({"test": args.small}, args.small // 4) if args.small else (None, 30_000)
    index_dir, info = load_index(args.index_type, copies, limit, log=log, backbone=args.backbone)
    col = write_collection(default_root() / collection_name(copies, limit), copies, limit)
    log(
        f"index {index_dir}: {info.images} images ({'reused' if info.reused else 'built'}"
        f" in {time.perf_counter() - t_build:.0f} s)"
    )

    from cbir.index.store import IndexStore

    store = IndexStore.open(index_dir)
    try:
        all_ids = np.array([r[0] for r in store.conn.execute("SELECT id FROM images")])
        id_of = {r[1]: r[0] for r in store.conn.execute("SELECT id, path FROM images")}
    finally:
        store.close()
    rng = np.random.default_rng(7)
    q_ids = rng.choice(all_ids, args.requests)
    by_id = [id_request(int(i)) for i in q_ids]
    log(f"making {args.requests} upload queries (transformed copies, not in the index)")
    uploads, bodies = [], []
    for s in rng.integers(0, len(col.originals), args.requests):
        img, fmt = transformed(Image.open(col.originals[s]).convert("L"), rng)
        data = encode(img, fmt)
        bodies.append(data)
        uploads.append(upload_request(data, f"q.{fmt.lower()}", expect=id_of[col.originals[s]]))

    log("raw peers: faiss search alone, embedding alone")
    raw_faiss = faiss_alone(index_dir, q_ids[:2000])
    raw_embed = embedding_alone(index_dir, bodies[:300], args.embed_threads)
    breakdown = upload_breakdown(index_dir, bodies[:201], args.embed_threads)

    def self_first(req, j) -> bool:
        top = j["results"]
        return bool(top) and (top[0]["id"] == req.expect or top[0]["score"] >= 0.99999)

    def source_in_top10(req, j) -> bool:
        return req.expect in [h["id"] for h in j["results"]]

    results: list[LoadResult] = []
    extra = ("--embed-threads", str(args.embed_threads)) if args.embed_threads else ()
    load_avg = []
    with ServerProcess(index_dir, *extra, workers=args.workers) as srv:
        log(
            f"cbir serve up in {srv.startup_s:.1f} s ({args.workers} workers), RSS {srv.rss() / 2**20:.0f} MiB"
        )
        run_load(srv.url, by_id[:200], 200, max(levels))  # warm-up
        run_load(srv.url, uploads[:50], 50, max(levels))
        n_check = max(1, args.requests // 10)
        for (name, reqs, check), conc in (
            (kind, c)
            for c in levels
            for kind in (
                ("GET /search?id (search by id)", by_id, self_first),
                ("POST /search (search by upload)", uploads, source_in_top10),
            )
        ):
            load_avg.append(os.getloadavg()[0])
            if wrk_available():
                log(f"wrk: {args.requests} x {name}")
                results.append(
                    run_wrk(
                        srv.url,
                        reqs,
                        args.requests,
                        conc,
                        name=name,
                        server_pid=srv.pid,
                    )
                )
            log(f"httpx: {n_check} x {name}, answers checked")
            results.append(
                run_load(
                    srv.url,
                    reqs[:n_check],
                    n_check,
                    conc,
                    name=name,
                    check=check,
                    server_pid=srv.pid,
                )
            )
        rss = srv.rss()
    targets = {"GET": 5.0, "POST": 40.0}
    print(
        f"index: {info.images} images ({index_dir.name}, {args.index_type}); built in"
        f" {info.commit_seconds:.0f} s (originals committed from cached features) +"
        f" {info.cbir_index_seconds:.0f} s (`cbir index`: {info.embedded} copies embedded at"
        f" {info.embedded_per_s:.0f} img/s, then the {args.index_type} index);"
        f" backbone {raw_embed['backbone']}"
    )
    print(
        f"cbir serve --workers {args.workers} --embed-threads {args.embed_threads};"
        f" {args.concurrency} requests in flight; server RSS after the load {rss / 2**20:.0f} MiB;"
        f" load average at start {', '.join(f'{x:.1f}' for x in load_avg)} on {os.cpu_count()} cores"
    )
    print()
    print(
        "| load | client | in flight | requests | errors | p50 ms | p99 ms | q/s | server CPU ms/req | answers ok | target p50 |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        t = targets[r.name.split()[0]]
        ok = "" if r.checked_ok is None else f"{100 * r.checked_ok / max(r.requests, 1):.1f}%"
        cpu = "" if r.server_cpu_s is None else f"{1e3 * r.server_cpu_s / max(r.requests, 1):.2f}"
        met = "met" if r.p50_ms <= t and r.errors == 0 else "missed"
        if r.concurrency != 8:
            met = f"(target at 8 in flight; {'under' if r.p50_ms <= t else 'over'})"
        print(
            f"| {r.name} | {r.client} | {r.concurrency} | {r.requests} | {r.errors} | {r.p50_ms:.1f} | {r.p99_ms:.1f}"
            f" | {r.qps:.0f} | {cpu} | {ok} | <= {t:g} ms: {met} |"
        )
    print(
        f"| faiss search alone (same index, 1 thread, one query at a time) | - | 1 | {raw_faiss['n']} | 0"
        f" | {raw_faiss['p50_ms']:.2f} | {raw_faiss['p99_ms']:.2f} | {raw_faiss['qps']:.0f} | |"
        f" recall@10 {raw_faiss['recall_at_10']:.3f} vs exact | |"
    )
    print(
        f"| embedding alone (decode + onnxruntime, {args.embed_threads} thread, one at a time) | - | 1 |"
        f" {raw_embed['n']} | 0 | {raw_embed['p50_ms']:.1f} | {raw_embed['p99_ms']:.1f} |"
        f" {raw_embed['qps']:.0f} ({raw_embed['qps_all_cores']:.0f} on {os.cpu_count()} threads) | | | |"
    )
    print()
    print(
        f"Search by upload, one at a time, the server's steps in this process (p50 ms over"
        f" 200 uploads, {raw_embed['backbone']}, {args.embed_threads} onnxruntime thread):"
    )
    print("| | " + " | ".join(breakdown["wall_p50_ms"]) + " |")
    print("|---|" + "---:|" * len(breakdown["wall_p50_ms"]))
    for what, row in (("wall p50 ms", "wall_p50_ms"), ("CPU ms (mean)", "cpu_mean_ms")):
        print(f"| {what} | " + " | ".join(f"{v:.2f}" for v in breakdown[row].values()) + " |")
    for r in results:
        if r.name.startswith("POST") and r.server_cpu_s is not None:
            cpu = 1e3 * r.server_cpu_s / max(r.requests, 1)
            print(
                f"server CPU ms per upload ({r.client}, {r.concurrency} in flight) {cpu:.2f}:"
                f" HTTP, multipart and framework about {cpu - breakdown['cpu_mean_ms']['sum']:.2f}"
            )
            break
    conc = max(levels)
    floor = conc / raw_embed["qps_all_cores"] * 1e3
    print()
    print(
        f"With {conc} uploads in flight and the embedding alone at"
        f" {raw_embed['qps_all_cores']:.0f}/s on all cores, no server can answer uploads with a"
        f" mean latency under {floor:.0f} ms here (Little's law: in flight / throughput)."
    )
    by_id = [
        r
        for r in results
        if r.name.startswith("GET") and r.server_cpu_s is not None and r.concurrency == 1
    ]
    if by_id:
        cpu = 1e3 * by_id[0].server_cpu_s / max(by_id[0].requests, 1)
        cores = os.cpu_count() or 1
        print(
            f"Search by id costs the server {cpu:.2f} CPU ms per request (1 in flight): with"
            f" {conc} in flight on {cores} cores, the mean latency cannot go under"
            f" {conc * cpu / cores:.1f} ms (Little's law: throughput <= {cores} / CPU per request),"
            " before the load generator's own CPU."
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "build": info.to_dict(),
                    "results": [r.summary() for r in results],
                    "faiss_alone": raw_faiss,
                    "embedding_alone": raw_embed,
                    "upload_breakdown_p50_ms": breakdown,
                },
                f,
                indent=2,
            )
    return 0 if all(r.errors == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

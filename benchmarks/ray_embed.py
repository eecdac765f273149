"""Single-process vs Ray (actor pool) embedding on the same folder of real JPEGs.

Indexes one folder with ``cbir index`` in this process (decoding threads + one
onnxruntime session on all cores) and with ``--engine ray`` (a local Ray, ``--workers``
actors of ``--threads`` CPUs, one session each), at two folder sizes, and prints:

  * wall time and img/s of each engine on the whole folder;
  * a linear fit ``time = fixed + n * per_image`` from the two sizes, so the Ray job's
    fixed cost (actor start-up, dataset planning) and its per-image overhead over the
    single-process path are separate numbers;
  * the one-time ``ray.init`` cost (paid once per process or cluster).

The JPEGs are unique random crops/resizes of scikit-image's photos, 320-800 px on the
long side (see benchmarks/embed_throughput.py). On this project's 2-core machine the
two engines should be about equal: Ray pays for spreading work it cannot spread further.

    python benchmarks/ray_embed.py [--n 400] [--small 40] [--workers 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from embed_throughput import make_jpegs  # noqa: E402


def run_index(folder: Path, index_dir: Path, engine: object | None) -> tuple[float, int]:
    """(seconds, images embedded) of one fresh ``index_folder`` run."""
    from cbir.pipeline import index_folder

    shutil.rmtree(index_dir, ignore_errors=True)
    t = time.perf_counter()
    s = index_folder(folder, index_dir, progress=False, engine=engine)
    return time.perf_counter() - t, s.indexed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400, help="images in the big folder")
    ap.add_argument(
        "--small", type=int, default=40, help="images in the small folder (for the fit)"
    )
    ap.add_argument("--workers", type=int, default=2, help="Ray actors")
    ap.add_argument("--threads", type=int, default=1, help="CPUs / onnxruntime threads per actor")
    args = ap.parse_args()

    import ray

    from cbir.backbones.efficientnet_lite import get_backbone
    from cbir.distributed.ray_embed import RayEngine

    get_backbone(224)  # export / load the model before timing
    tmp = Path(tempfile.mkdtemp(prefix="cbir-ray-bench-"))
    try:
        big, small = tmp / "big", tmp / "small"
        make_jpegs(big, args.n, seed=0)
        make_jpegs(small, args.small, seed=1)
        t = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        t_init = time.perf_counter() - t
        engine = RayEngine(workers=args.workers, threads=args.threads)
        rows = []
        for name, eng in (
            ("single process", None),
            (f"ray ({args.workers}x{args.threads} cpu)", engine),
        ):
            run_index(small, tmp / "warm", eng)  # warm caches (page cache, Ray workers' imports)
            ts, ns = run_index(small, tmp / "s", eng)
            tb, nb = run_index(big, tmp / "b", eng)
            per = (tb - ts) / (nb - ns)
            rows.append((name, nb, tb, nb / tb, ts - ns * per, per))
        ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"machine: {os.cpu_count()} cores; ray.init (local, once per process): {t_init:.1f} s")
    print(f"{'engine':<22} {'images':>6} {'wall s':>7} {'img/s':>6} {'fixed s':>8} {'ms/img':>7}")
    for name, n, t, ips, fixed, per in rows:
        print(f"{name:<22} {n:>6} {t:>7.1f} {ips:>6.1f} {fixed:>8.2f} {per * 1000:>7.1f}")
    (_, _, t0, ips0, _, per0), (_, _, t1, ips1, fixed1, per1) = rows
    print(
        f"ray / single process: {ips1 / ips0:.2f}x img/s on {rows[0][1]} images;"
        f" per-image overhead {1000 * (per1 - per0):+.1f} ms, fixed cost per run {fixed1:.1f} s"
    )


if __name__ == "__main__":
    main()

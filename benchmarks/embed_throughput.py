"""Embedding throughput: raw onnxruntime forward vs `cbir index` end to end, fp32 and int8.

Prints, in one run, for ``efficientnet-lite0`` (fp32) and ``efficientnet-lite0-int8``:
  * raw onnxruntime: img/s of the backbone's .onnx file on random 224 px tensors, batch 64,
    no decoding: a plain InferenceSession (onnxruntime's defaults: its idle threads spin)
    and the session `cbir index` runs (`cbir.backbones.session.cpu_session`: no spinning,
    so that decoding threads get the cores); the ratio is taken against the faster;
  * `cbir index --backbone NAME`: img/s of the whole pipeline (find, hash, decode, resize,
    embed, commit to SQLite + segments, build the faiss index) on a folder of real JPEGs;
  * their ratio (target >= 0.9: decoding and storage hide behind inference), and int8 over
    fp32 for both (target >= 1.6 end to end);
  * the load average before and after (other processes share the cores);
  * the CPU budget: CPU ms per image of each step, one image at a time on one thread
    (read + sha256 + EXIF, JPEG decode, resize, the forward pass at batch 64): on a machine
    whose cores are all busy, end to end / raw cannot exceed forward / (forward + the rest).

The JPEGs are unique random crops/resizes of scikit-image's bundled photos, 320-800 px
on the long side (real photo content; no two files alike).

    python benchmarks/embed_throughput.py [--n 1000] [--repeat 2] [--backbones fp32,int8]
        [--batch 64]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_jpegs(folder: Path, n: int, seed: int = 0) -> None:
    from skimage import data

    names = ["astronaut", "camera", "chelsea", "coffee", "coins", "horse", "rocket",
             "immunohistochemistry", "hubble_deep_field", "page"]  # fmt: skip
    photos = []
    for name in names:
        a = getattr(data, name)()
        a = a[..., :3] if a.ndim == 3 else np.stack([a] * 3, -1)
        photos.append(Image.fromarray(a.astype(np.uint8)))
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = photos[i % len(photos)]
        w, h = img.size
        cw, ch = int(w * rng.uniform(0.5, 1.0)), int(h * rng.uniform(0.5, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = img.crop((x, y, x + cw, y + ch))
        side = int(rng.integers(320, 801))
        scale = side / max(crop.size)
        crop = crop.resize((max(1, int(crop.width * scale)), max(1, int(crop.height * scale))))
        crop.save(folder / f"img{i:05d}.jpg", quality=int(rng.integers(80, 96)))


BACKBONES = {"fp32": "efficientnet-lite0", "int8": "efficientnet-lite0-int8"}


def model_file(backbone: str, size: int = 224) -> Path:
    """The .onnx file ``cbir index --backbone backbone`` runs (built on first use)."""
    if backbone == BACKBONES["int8"]:
        from cbir.backbones.efficientnet_int8 import int8_path

        return int8_path(size)
    from cbir.backbones.efficientnet_lite import onnx_path

    return onnx_path(size)


def raw_onnxruntime(
    backbone: str, n: int, size: int = 224, batch: int = 64, cbir_session: bool = False
) -> float:
    """img/s of an onnxruntime session on the backbone's model file (random input): a plain
    one, or (``cbir_session``) the one cbir runs (:func:`cbir.backbones.session.cpu_session`)."""
    import onnxruntime as ort

    from cbir.backbones.session import cpu_session

    path = model_file(backbone, size)
    if cbir_session:
        sess = cpu_session(path)
    else:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    sess.run(None, {"images": x})  # warm-up
    done, t = 0, time.perf_counter()
    while done < n:
        sess.run(None, {"images": x})
        done += batch
    return done / (time.perf_counter() - t)


def cpu_budget(folder: Path, backbones: list[str], n: int = 200) -> dict[str, float]:
    """CPU ms per image of each step of `cbir index`, one image at a time on this thread
    (and the forward pass of each backbone, batch 64, on its own session)."""
    import hashlib

    from cbir.backbones.registry import open_backbone
    from cbir.data.images import decode, read_bytes
    from cbir.index.metadata import exif_from_bytes

    files = sorted(folder.iterdir())[:n]
    pre = open_backbone(BACKBONES["fp32"], size=224).preprocess
    out: dict[str, float] = {}
    c = time.process_time()
    datas = [read_bytes(f) for f in files]
    for d in datas:
        hashlib.sha256(d).hexdigest()
        exif_from_bytes(d)
    out["read + sha256 + EXIF"] = (time.process_time() - c) / len(files) * 1e3
    c = time.process_time()
    imgs = [decode(d, draft_size=224) for d in datas]
    out["JPEG decode (reduced DCT scale)"] = (time.process_time() - c) / len(files) * 1e3
    c = time.process_time()
    arrays = [pre(img) for img in imgs]
    out["resize + crop to 224 px"] = (time.process_time() - c) / len(files) * 1e3
    x = np.stack((arrays * 64)[:64])
    for name in backbones:
        bb = open_backbone(name, size=224)
        bb.run(x)
        c = time.process_time()
        for _ in range(2):
            bb.run(x)
        out[f"forward {name}"] = (time.process_time() - c) / (2 * len(x)) * 1e3
    return out


def cbir_index(
    backbone: str, folder: Path, index_dir: Path, batch: int = 64, workers: int = 2
) -> tuple[float, int]:
    """img/s of `cbir index --backbone backbone` end to end (fresh index; warm session)."""
    from cbir.pipeline import index_folder

    shutil.rmtree(index_dir, ignore_errors=True)
    t = time.perf_counter()
    s = index_folder(
        folder, index_dir, batch_size=batch, workers=workers, progress=False, backbone=backbone
    )
    dt = time.perf_counter() - t
    return s.indexed / dt, s.indexed


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="number of JPEGs")
    ap.add_argument("--repeat", type=int, default=2, help="alternating runs of each; best kept")
    ap.add_argument("--backbones", default="fp32,int8", help="comma-separated: fp32, int8")
    ap.add_argument("--batch", type=int, default=64, help="cbir index --batch-size")
    args = ap.parse_args()
    kinds = [k.strip() for k in args.backbones.split(",") if k.strip()]
    if not kinds or any(k not in BACKBONES for k in kinds):
        ap.error(f"--backbones: a comma-separated subset of {', '.join(BACKBONES)}")

    work = Path(tempfile.mkdtemp(prefix="cbir-bench-"))
    try:
        folder = work / "jpegs"
        make_jpegs(folder, args.n)
        mb = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
        # warm every path (ONNX export, int8 build, session creation) outside the timings
        from cbir.backbones.registry import open_backbone

        for k in kinds:
            open_backbone(BACKBONES[k], size=224)
        before = load()
        raw: dict[str, list[float]] = {k: [] for k in kinds}
        raw_cbir: dict[str, list[float]] = {k: [] for k in kinds}
        end: dict[str, list[float]] = {k: [] for k in kinds}
        count = 0
        for _ in range(args.repeat):  # alternate, so background load hits all alike
            for k in kinds:
                raw[k].append(raw_onnxruntime(BACKBONES[k], args.n))
                for b in sorted({64, args.batch}):  # cbir's session, at 64 and at --batch
                    raw_cbir[k].append(
                        raw_onnxruntime(BACKBONES[k], args.n, batch=b, cbir_session=True)
                    )
                ips, count = cbir_index(BACKBONES[k], folder, work / "index", batch=args.batch)
                end[k].append(ips)
        after = load()
        budget = cpu_budget(folder, [BACKBONES[k] for k in kinds])
        r = {k: max(v) for k, v in raw.items()}
        rc = {k: max(v) for k, v in raw_cbir.items()}
        e = {k: max(v) for k, v in end.items()}
        print(f"cores: {os.cpu_count()}  images: {count} real JPEGs ({mb:.0f} MiB, 320-800 px)")
        print(f"load average (1, 5, 15 min): before {before}; after {after}")
        raw_batches = " and ".join(str(b) for b in sorted({64, args.batch}))
        print(f"cbir index --batch-size {args.batch}; raw: batch {raw_batches}; best runs kept")
        print(
            f"{'backbone':<26} {'raw plain':>10} {'raw cbir':>9} {'cbir index img/s':>17}"
            f" {'ratio':>6}"
        )
        for k in kinds:
            best = max(r[k], rc[k])
            print(
                f"{BACKBONES[k]:<26} {r[k]:>10.1f} {rc[k]:>9.1f} {e[k]:>17.1f} {e[k] / best:>6.2f}"
            )
        if "fp32" in r and "int8" in r:
            print(
                f"{'int8 / fp32':<26} {r['int8'] / r['fp32']:>10.2f}"
                f" {rc['int8'] / rc['fp32']:>9.2f} {e['int8'] / e['fp32']:>17.2f}"
            )
        print("ratio: cbir index over the faster raw session (target >= 0.9)")
        for k in kinds:
            print(
                f"runs {k}: raw plain {', '.join(f'{v:.1f}' for v in raw[k])};"
                f" raw cbir {', '.join(f'{v:.1f}' for v in raw_cbir[k])};"
                f" cbir index {', '.join(f'{v:.1f}' for v in end[k])}"
            )
        print("CPU ms per image (one thread, one image at a time; forward at batch 64):")
        rest = sum(v for name, v in budget.items() if not name.startswith("forward"))
        for name, v in budget.items():
            print(f"  {name:<40} {v:>6.2f}")
        for k in kinds:
            f = budget[f"forward {BACKBONES[k]}"]
            print(
                f"  ceiling on busy cores, {BACKBONES[k]}: forward / (forward + rest)"
                f" = {f / (f + rest):.2f}"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

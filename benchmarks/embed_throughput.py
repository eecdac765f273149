"""Embedding throughput: raw onnxruntime forward vs `cbir index` end to end, fp32 and int8.

Prints, in one run, for ``efficientnet-lite0`` (fp32) and ``efficientnet-lite0-int8``:
  * raw onnxruntime: img/s of the backbone's .onnx file on random 224 px tensors
    (a plain InferenceSession on the same file, batch 64, no decoding);
  * `cbir index --backbone NAME`: img/s of the whole pipeline (find, hash, decode, resize,
    embed, commit to SQLite + segments, build the faiss index) on a folder of real JPEGs;
  * their ratio (target >= 0.9: decoding and storage hide behind inference), and int8 over
    fp32 for both (target >= 1.6 end to end);
  * the load average before and after (other processes share the cores).

The JPEGs are unique random crops/resizes of scikit-image's bundled photos, 320-800 px
on the long side (real photo content; no two files alike).

    python benchmarks/embed_throughput.py [--n 1000] [--repeat 2] [--backbones fp32,int8]
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


def raw_onnxruntime(backbone: str, n: int, size: int = 224, batch: int = 64) -> float:
    """img/s of a plain onnxruntime session on the backbone's model file (random input)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_file(backbone, size)), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    sess.run(None, {"images": x})  # warm-up
    done, t = 0, time.perf_counter()
    while done < n:
        sess.run(None, {"images": x})
        done += batch
    return done / (time.perf_counter() - t)


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
        end: dict[str, list[float]] = {k: [] for k in kinds}
        count = 0
        for _ in range(args.repeat):  # alternate, so background load hits all alike
            for k in kinds:
                raw[k].append(raw_onnxruntime(BACKBONES[k], args.n))
                ips, count = cbir_index(BACKBONES[k], folder, work / "index")
                end[k].append(ips)
        after = load()
        r = {k: max(v) for k, v in raw.items()}
        e = {k: max(v) for k, v in end.items()}
        print(f"cores: {os.cpu_count()}  images: {count} real JPEGs ({mb:.0f} MiB, 320-800 px)")
        print(f"load average (1, 5, 15 min): before {before}; after {after}")
        print(f"{'backbone':<26} {'raw img/s':>10} {'cbir index img/s':>17} {'ratio':>6}")
        for k in kinds:
            print(f"{BACKBONES[k]:<26} {r[k]:>10.1f} {e[k]:>17.1f} {e[k] / r[k]:>6.2f}")
        if "fp32" in r and "int8" in r:
            print(
                f"{'int8 / fp32':<26} {r['int8'] / r['fp32']:>10.2f} {e['int8'] / e['fp32']:>17.2f}"
            )
        for k in kinds:
            print(
                f"runs {k}: raw {', '.join(f'{v:.1f}' for v in raw[k])};"
                f" cbir {', '.join(f'{v:.1f}' for v in end[k])}"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Embedding throughput: raw onnxruntime forward vs `cbir index` end to end.

Prints, in one run:
  * raw onnxruntime: img/s of the exported EfficientNet-Lite0 on random 224 px tensors
    (a plain InferenceSession on the same .onnx file, batch 64, no decoding);
  * `cbir index`: img/s of the whole pipeline (find, hash, decode, resize, embed,
    commit to SQLite + segments, build the faiss index) on a folder of real JPEGs;
  * their ratio (target >= 0.9: decoding and storage hide behind inference).

The JPEGs are unique random crops/resizes of scikit-image's bundled photos, 320-800 px
on the long side (real photo content; no two files alike).

    python benchmarks/embed_throughput.py [--n 1000] [--repeat 2]
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


def raw_onnxruntime(n: int, size: int = 224, batch: int = 64) -> float:
    """img/s of a plain onnxruntime session on the same model file (random input)."""
    import onnxruntime as ort

    from cbir.backbones.efficientnet_lite import onnx_path

    sess = ort.InferenceSession(str(onnx_path(size)), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    sess.run(None, {"images": x})  # warm-up
    done, t = 0, time.perf_counter()
    while done < n:
        sess.run(None, {"images": x})
        done += batch
    return done / (time.perf_counter() - t)


def cbir_index(
    folder: Path, index_dir: Path, batch: int = 64, workers: int = 2
) -> tuple[float, int]:
    """img/s of `cbir index` end to end (fresh index; the backbone session is warm)."""
    from cbir.pipeline import index_folder

    shutil.rmtree(index_dir, ignore_errors=True)
    t = time.perf_counter()
    s = index_folder(folder, index_dir, batch_size=batch, workers=workers, progress=False)
    dt = time.perf_counter() - t
    return s.indexed / dt, s.indexed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="number of JPEGs")
    ap.add_argument("--repeat", type=int, default=2, help="alternating runs of each; best kept")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="cbir-bench-"))
    try:
        folder = work / "jpegs"
        make_jpegs(folder, args.n)
        mb = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
        # warm both paths (ONNX export, session creation) outside the timings
        from cbir.backbones.efficientnet_lite import get_backbone

        get_backbone(224, "crop")
        raw, end = [], []
        for _ in range(args.repeat):  # alternate, so background load hits both alike
            raw.append(raw_onnxruntime(args.n))
            ips, count = cbir_index(folder, work / "index")
            end.append(ips)
        r, e = max(raw), max(end)
        print(f"cores: {os.cpu_count()}  images: {count} real JPEGs ({mb:.0f} MiB, 320-800 px)")
        print(f"{'path':<40} {'img/s':>8}")
        print(f"{'raw onnxruntime forward (random 224px u8)':<40} {r:>8.1f}")
        print(f"{'cbir index end to end (real JPEGs)':<40} {e:>8.1f}")
        print(f"{'ratio (end to end / raw)':<40} {e / r:>8.2f}")
        print(
            f"runs: raw {', '.join(f'{v:.1f}' for v in raw)}; cbir {', '.join(f'{v:.1f}' for v in end)}"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

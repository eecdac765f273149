"""Keyword text queries with no training: precision@10 of class-name queries on Fashion-MNIST.

Writes Fashion-MNIST test images as PNG files into a temp folder (``--per-class`` of each
class), indexes them with ``cbir index``, and asks ``cbir search --text NAME --text-mode
classes`` for each of the 10 class names. A hit is relevant when it is an image of the
queried class (chance: 0.1). Also times the query (warm: MiniLM on onnxruntime, class
name match, sparse scoring over the stored top-5 ImageNet classes) and the sentence
encoder against its peer, the packaged sentence-transformers model, in the same run.

    flock /tmp/cbir-heavy.lock .venv/bin/python benchmarks/text_queries.py [--per-class 100] [--invert]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

FASHION = Path("/usr/share/datasets/fashion-mnist")


def write_pngs(out: Path, per_class: int, invert: bool) -> None:
    from cbir.data.idx import FASHION_CLASSES, read_idx

    imgs = read_idx(FASHION / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(FASHION / "t10k-labels-idx1-ubyte.gz")
    for c, name in enumerate(FASHION_CLASSES):
        d = out / name.replace("/", "-")
        d.mkdir(parents=True)
        for i in np.flatnonzero(labels == c)[:per_class]:
            a = 255 - imgs[i] if invert else imgs[i]
            Image.fromarray(a).save(d / f"{i:05d}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=100, help="test images per class")
    ap.add_argument(
        "--invert", action="store_true", help="dark garments on white, as product photos"
    )
    ap.add_argument("--repeats", type=int, default=20, help="timed runs of each query")
    args = ap.parse_args()

    from cbir.cli import main as cbir
    from cbir.data.idx import FASHION_CLASSES
    from cbir.search.searcher import Searcher
    from cbir.search.text import class_names, match_classes

    with tempfile.TemporaryDirectory() as tmp:
        images, index = Path(tmp) / "fmnist", Path(tmp) / "index"
        write_pngs(images, args.per_class, args.invert)
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            assert cbir(["index", str(images), "--index", str(index)]) == 0
        t_index = time.perf_counter() - t0
        s = Searcher(index)
        t0 = time.perf_counter()
        s.search_text("warm up", 10, mode="classes")  # loads MiniLM, the name embeddings
        t_cold = time.perf_counter() - t0
        names = class_names()
        rows = []
        for cname in FASHION_CLASSES:
            hits = s.search_text(cname, 10, mode="classes")
            rel = sum(Path(h.path).parent.name == cname.replace("/", "-") for h in hits)
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                s.search_text(cname, 10, mode="classes")
                times.append(time.perf_counter() - t0)
            matched = ", ".join(names.label[c] for c, _ in match_classes(cname)[:3])
            rows.append((cname, rel / 10, len(hits), statistics.median(times) * 1e3, matched))
        n = len(s)
        s.close()

    from sentence_transformers import SentenceTransformer  # the peer (cbir[text] pulls it)

    from cbir.backbones.minilm import _offline, get_encoder, model_dir

    def sentence_transformer() -> SentenceTransformer:
        _offline()
        return SentenceTransformer(str(model_dir()), device="cpu")

    enc = get_encoder()
    queries = list(FASHION_CLASSES)

    def per_query(fn) -> float:
        fn(queries[:1])
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            for q in queries:
                fn([q])
        return (time.perf_counter() - t0) / (args.repeats * len(queries)) * 1e3

    ours = per_query(enc.encode)
    t0 = time.perf_counter()
    st = sentence_transformer()
    t_st_load = time.perf_counter() - t0
    peer = per_query(lambda q: st.encode(q, normalize_embeddings=True, show_progress_bar=False))
    diff = float(np.abs(enc.encode(queries) - st.encode(queries, normalize_embeddings=True)).max())

    print(
        f"\nFashion-MNIST test images, {args.per_class} per class ({n} indexed"
        f"{', inverted' if args.invert else ''}); indexing {t_index:.1f} s;"
        f" first text query (model load) {t_cold * 1e3:.0f} ms\n"
    )
    print("| query | P@10 | hits | median latency (ms) | closest ImageNet classes |")
    print("|---|---|---|---|---|")
    for cname, p, nh, ms, matched in rows:
        print(f"| {cname} | {p:.1f} | {nh} | {ms:.1f} | {matched} |")
    mean_p = statistics.mean(r[1] for r in rows)
    mean_ms = statistics.mean(r[3] for r in rows)
    print(f"| **mean** | **{mean_p:.2f}** | | {mean_ms:.1f} | (chance: 0.10) |")
    print("\n| sentence encoder, one query | ms | ratio |")
    print("|---|---|---|")
    print(f"| cbir (ONNX on onnxruntime + tokenizers) | {ours:.2f} | 1.00 |")
    print(
        f"| sentence-transformers (PyTorch), load {t_st_load:.1f} s | {peer:.2f} | {peer / ours:.2f} |"
    )
    print(f"\nmax |difference| of the embeddings: {diff:.2e}")


if __name__ == "__main__":
    main()

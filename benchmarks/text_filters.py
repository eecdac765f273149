"""Speed of metadata text queries and ``--where`` filtered image search at 60,000 images.

Builds an index of the 60,000 Fashion-MNIST training images from their cached backbone
features (``cbir.backbones.cache.dataset_features``; no embedding) with sidecar-style
metadata per image (``title``: an adjective and the class name, ``label``, ``year``
uniform over 1900-2019), committed through ``IndexStore.commit`` as ``cbir index`` does.
Then times, one query at a time (median of ``--repeats``):

- ``--text`` (FTS5 bm25) with and without a ``--where`` filter;
- image search by a stored image's features, unfiltered, against raw faiss on the same
  index (the peer);
- filtered image search, a selective filter (500 images pass: exact over them) and a
  broad one (half pass: deeper index search), against raw faiss with an
  ``IDSelectorBatch`` of the passing ids; the top-10 ids must be the same.

    flock /tmp/cbir-heavy.lock .venv/bin/python benchmarks/text_filters.py
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

ADJ = ["red", "striped", "vintage", "plain", "black", "floral", "denim", "wool"]


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, out


def build(root: Path, n: int) -> None:
    from cbir.backbones.cache import dataset_features
    from cbir.data.registry import open_dataset
    from cbir.index import vector_index
    from cbir.index.store import NewImage
    from cbir.pipeline import create_or_open

    split = open_dataset("fashion-mnist").splits["train"]
    feats = np.asarray(dataset_features(split, progress=False)[:n], np.float32)
    labels = np.asarray(split.labels)[:n]
    names = split.class_names or []
    store = create_or_open(root)
    store.lock()
    try:
        for start in range(0, n, 10_000):
            batch = []
            for i in range(start, min(n, start + 10_000)):
                cname = names[int(labels[i])]
                side = {
                    "title": f"{ADJ[i % len(ADJ)]} {cname}",
                    "label": cname,
                    "year": 1900 + i % 120,
                }
                im = NewImage(f"/fmnist/train/{i:05d}.png", f"{i:064x}", 784, 0, 28, 28)
                im.meta = {"sidecar": side, "exif": {}}
                batch.append(im)
            store.commit(batch, feats[start : start + len(batch)])
        vector_index.refresh(store)
    finally:
        store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60_000)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()

    from cbir.search.searcher import Searcher
    from cbir.search.where import matching_ids

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "idx"
        t0 = time.perf_counter()
        build(root, args.n)
        t_build = time.perf_counter() - t0
        s = Searcher(root)
        s.refresh()
        index = s._index
        q_feats = s.store.features([123])
        q = np.ascontiguousarray(s.transform(q_feats), np.float32)
        rows: list[tuple[str, float, str, str]] = []

        ms, hits = timed(lambda: s.search_text("ankle boot", 10, mode="metadata"), args.repeats)
        rows.append(('--text "ankle boot"', ms, "", f"{len(hits)} hits"))
        ms, hits = timed(
            lambda: s.search_text("ankle boot", 10, where="year < 1950", mode="metadata"),
            args.repeats,
        )
        rows.append(('--text "ankle boot" --where "year < 1950"', ms, "", f"{len(hits)} hits"))

        ms, hits = timed(lambda: s.search_features(q_feats, 10)[0], args.repeats)
        raw, (_, ids) = timed(lambda: index.search(q, 10), args.repeats)
        same = [h.id for h in hits] == [int(i) for i in ids[0]]
        rows.append(
            ("image search, no filter", ms, f"{raw:.2f}", f"{ms / raw:.1f}x, same top-10: {same}")
        )

        for where in ("year = 1950", "year >= 1960", "label = 'Bag' and year < 1960"):
            w = s.where(where)
            allowed = np.fromiter(matching_ids(s.store.conn, w), np.int64)
            ms, hits = timed(lambda w=w: s.search_features(q_feats, 10, w)[0], args.repeats)

            def peer(allowed: np.ndarray = allowed) -> Any:
                sel = faiss.IDSelectorBatch(allowed)
                return index.search(q, 10, params=faiss.SearchParameters(sel=sel))

            raw, (_, ids) = timed(peer, args.repeats)
            same = [h.id for h in hits] == [int(i) for i in ids[0] if i >= 0]
            rows.append(
                (f'image search --where "{where}" ({len(allowed)} pass)', ms, f"{raw:.2f}",
                 f"{ms / raw:.1f}x, {len(hits)} hits, same top-10: {same}")
            )  # fmt: skip
        s.close()

    print(
        f"\n{args.n} Fashion-MNIST train images with metadata, Flat index; built in {t_build:.1f} s\n"
    )
    print("| query (k=10) | cbir ms | raw faiss ms | ratio, check |")
    print("|---|---|---|---|")
    for name, ms, raw_s, note in rows:
        print(f"| {name} | {ms:.2f} | {raw_s} | {note} |")


if __name__ == "__main__":
    main()

"""`make demo`: index a real sample collection, run a few queries, write a page of results.

The collection is 1,000 Fashion-MNIST test images (100 per class, written as PNG files in
class folders) plus scikit-image's bundled photos where installed. Queries are augmented
copies (crop, rotation, JPEG re-encode) of indexed images and one unseen image per class.
Everything goes to ``$CBIR_CACHE/demo`` (default ``~/.cache/cbir/demo``).
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cbir.data.registry import open_dataset
from cbir.pipeline import index_folder
from cbir.search.html import write_html
from cbir.search.searcher import Searcher
from cbir.utils import cache_dir


def _safe(name: str) -> str:
    return name.replace("/", "-").replace(" ", "_")


def write_sample(root: Path, per_class: int = 100) -> tuple[Path, list[Path]]:
    """Write the sample collection and the query images; returns (collection, queries)."""
    coll, qdir = root / "collection", root / "queries"
    coll.mkdir(parents=True, exist_ok=True)
    qdir.mkdir(parents=True, exist_ok=True)
    test = open_dataset("fashion-mnist")["test"]
    names = test.class_names or []
    queries: list[Path] = []
    for c in range(10):
        idx = np.flatnonzero(test.labels == c)
        chosen, unseen = idx[:per_class], idx[per_class]
        d = coll / f"{c}-{_safe(names[c])}"
        d.mkdir(exist_ok=True)
        for i in chosen:
            p = d / f"{i:05d}.png"
            if not p.exists():
                test.load(int(i)).convert("L").save(p)
        q = qdir / f"unseen-{_safe(names[c])}-{unseen}.png"
        test.load(int(unseen)).convert("L").save(q)
        queries.append(q)
    try:
        from skimage import data

        photos = coll / "photos"
        photos.mkdir(exist_ok=True)
        for name in ("astronaut", "coffee", "chelsea", "rocket", "horse", "camera"):
            a = getattr(data, name)()
            img = Image.fromarray(a if a.dtype == np.uint8 else (a * 255).astype(np.uint8)).convert(
                "RGB"
            )
            img.save(photos / f"{name}.jpg", quality=92)
        for name, op in (("coffee", "crop"), ("chelsea", "rotate")):
            img = Image.open(photos / f"{name}.jpg")
            w, h = img.size
            img = (
                img.crop((w // 10, h // 10, w - w // 10, h - h // 10))
                if op == "crop"
                else img.rotate(7)
            )
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=55)
            q = qdir / f"{op}-of-{name}.jpg"
            q.write_bytes(buf.getvalue())
            queries.insert(0, q)
    except ImportError:
        pass
    return coll, queries


def main() -> int:
    root = cache_dir("demo")
    print(f"cbir demo: writing a sample collection under {root}")
    coll, queries = write_sample(root)
    t0 = time.perf_counter()
    summary = index_folder(coll, root / "index")
    print("\n".join(summary.lines()))
    searcher = Searcher(root / "index")
    results = []
    for q in queries[:6]:
        hits = searcher.search_file(q, k=8)
        results.append((str(q), hits))
        print(f"\nquery: {q.name}")
        for h in hits[:5]:
            print(f"  {h.rank:>2}  {h.score:.3f}  {Path(h.path).parent.name}/{Path(h.path).name}")
    searcher.close()
    page = root / "results.html"
    write_html(page, results, title="cbir demo: query by image")
    print(f"\nwrote {page} (open it in a browser); total {time.perf_counter() - t0:.1f} s")
    print(f"try: .venv/bin/cbir search {root / 'index'} {queries[0]} -k 5")
    return 0


if __name__ == "__main__":
    sys.exit(main())

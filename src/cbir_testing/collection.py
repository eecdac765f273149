"""The collection the service is loaded with: Fashion-MNIST as files, plus transformed copies.

The 70,000 Fashion-MNIST images (Xiao et al. 2017) are written as PNG files and 30,000
transformed copies of random ones (rotation, shift, scale, flip, contrast; JPEG or PNG,
28 or 56 px) beside them: 100,000 real image files. The index over them is built in two
steps that both go through the store's real commit path:

1. the originals are committed with their backbone features from the feature cache
   (:func:`cbir.backbones.cache.dataset_features`, computed once per machine), each row
   carrying the sha256, size and mtime of its real file; a sample of the files is embedded
   again from disk and must equal its cached features;
2. ``cbir index`` proper (:func:`cbir.pipeline.index_folder`) runs over the whole folder:
   it finds the originals unchanged, embeds the copies, and builds the search index.

Both live under the cache directory (``$CBIR_CACHE/load/``) and are reused while their
manifest says they are complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from cbir.errors import CbirError
from cbir.utils import atomic_write_bytes, atomic_write_json, cache_dir

Log = Callable[[str], None]
MANIFEST = "collection.json"
VERSION = 1
#: Largest allowed difference between a cached feature and the same file embedded again.
FEATURE_TOLERANCE = 1e-3


def _quiet(_: str) -> None:
    pass


def transformed(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """A random near-copy of ``img`` (rotation, shift, scale, flip, contrast) and its format."""
    w, h = img.size
    angle = float(rng.uniform(-15, 15))
    scale = float(rng.uniform(0.85, 1.15))
    dx, dy = (float(v) for v in rng.uniform(-3, 3, 2))
    out = img.rotate(angle, Image.BILINEAR, translate=(dx, dy))
    side = max(8, int(round(w * scale)))
    out = out.resize((side, side), Image.BICUBIC)
    out = ImageOps.fit(out, (w, h), Image.BICUBIC) if side > w else ImageOps.pad(out, (w, h))
    if rng.random() < 0.5:
        out = ImageOps.mirror(out)
    out = ImageEnhance.Contrast(out).enhance(float(rng.uniform(0.7, 1.3)))
    if rng.random() < 0.5:
        out = out.resize((2 * w, 2 * h), Image.BICUBIC)
    return out, ("JPEG" if rng.random() < 0.5 else "PNG")


def encode(img: Image.Image, fmt: str) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


@dataclass
class Collection:
    """Image files on disk: originals (one per dataset item) and transformed copies.

    ``originals[i]`` is the file of dataset item ``keys[i]``; ``copies[j]`` is a
    transformed copy of ``originals[sources[j]]``.
    """

    root: Path
    keys: list[str]
    originals: list[str]
    copies: list[str]
    sources: list[int]
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.originals) + len(self.copies)


def _fashion_splits(limit: dict[str, int] | None) -> list[tuple[str, Any]]:
    from cbir.data.registry import open_dataset

    ds = open_dataset("fashion-mnist")
    out = []
    for split in ("train", "test"):
        images = ds[split]
        n = len(images) if limit is None else min(len(images), limit.get(split, 0))
        if n:
            out.append((split, images if n == len(images) else images.subset(range(n))))
    return out


def write_collection(
    root: str | os.PathLike[str],
    n_copies: int = 30_000,
    limit: dict[str, int] | None = None,
    seed: int = 0,
    log: Log = _quiet,
) -> Collection:
    """Write (or reuse) the Fashion-MNIST files and ``n_copies`` transformed copies under ``root``.

    Args:
        limit: images per split to write (``{"train": 60000, "test": 10000}`` when None).
    """
    root = Path(root).absolute()
    want = {"version": VERSION, "n_copies": n_copies, "limit": limit, "seed": seed}
    man = root / MANIFEST
    if man.exists():
        with open(man) as f:
            m = json.load(f)
        if {k: m.get(k) for k in want} == want:
            return Collection(root, m["keys"], m["originals"], m["copies"], m["sources"], m)
    t0 = time.perf_counter()
    keys: list[str] = []
    originals: list[str] = []
    for split, images in _fashion_splits(limit):
        d = root / split
        d.mkdir(parents=True, exist_ok=True)
        log(f"writing {len(images)} {images.name} images as PNG under {d}")
        for i in range(len(images)):
            p = d / f"{i:05d}.png"
            if not p.exists():
                atomic_write_bytes(p, encode(images.load(i).convert("L"), "PNG"))
            keys.append(images.keys[i])
            originals.append(str(p))
    if not originals:
        raise CbirError("no Fashion-MNIST images to write (limit is 0)")
    rng = np.random.default_rng(seed)
    sources = rng.integers(0, len(originals), n_copies).tolist()
    d = root / "copies"
    d.mkdir(parents=True, exist_ok=True)
    log(f"writing {n_copies} transformed copies under {d}")
    copies = []
    for j, s in enumerate(sources):
        img, fmt = transformed(Image.open(originals[s]).convert("L"), rng)
        p = d / f"{j:05d}.{'jpg' if fmt == 'JPEG' else 'png'}"
        atomic_write_bytes(p, encode(img, fmt))
        copies.append(str(p))
    m = {
        **want,
        "keys": keys,
        "originals": originals,
        "copies": copies,
        "sources": sources,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    atomic_write_json(man, m)
    return Collection(root, keys, originals, copies, sources, m)


@dataclass
class BuildInfo:
    """How the index was built (or that it was reused)."""

    index_dir: str
    images: int
    index_type: str
    reused: bool = False
    commit_seconds: float = 0.0
    cbir_index_seconds: float = 0.0
    embedded: int = 0
    embedded_per_s: float = 0.0
    feature_check_max_diff: float = 0.0
    feature_check_n: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _imagenet_head() -> tuple[np.ndarray, np.ndarray]:
    """The backbone's ImageNet classifier (weights, bias): logits = features @ W.T + b."""
    from cbir.backbones.efficientnet_lite import imagenet_classifier

    return imagenet_classifier()


def _cached_features(col: Collection, log: Log, backbone: str | None = None) -> np.ndarray:
    from cbir.backbones.cache import dataset_features
    from cbir.backbones.registry import DEFAULT

    parts = []
    for _split, images in _fashion_splits(col.info.get("limit")):
        log(f"backbone features of {images.name} ({len(images)} images, from the feature cache)")
        feats = dataset_features(images, size=224, backbone=backbone or DEFAULT)
        parts.append(np.asarray(feats, np.float32))
    feats = np.concatenate(parts)
    if len(feats) != len(col.originals):
        raise CbirError(
            f"{col.root}: {len(col.originals)} originals but {len(feats)} cached features"
        )
    return feats


def commit_originals(
    col: Collection,
    index_dir: Path,
    index_type: str,
    chunk: int = 4096,
    log: Log = _quiet,
    backbone: str | None = None,
) -> tuple[float, int, float]:
    """Commit the originals with their cached features (of ``backbone``, a registry spec;
    default efficientnet-lite0); returns (seconds, checked, max diff)."""
    from cbir.backbones.registry import backbone_for, top_classes
    from cbir.index.store import NewImage
    from cbir.pipeline import create_or_open

    t0 = time.perf_counter()
    store = create_or_open(index_dir, index_type, size=224, backbone=backbone)
    store.lock()
    try:
        have = {r[0] for r in store.conn.execute("SELECT path FROM images")}
        feats = _cached_features(col, log, backbone)
        # the cache must describe these files: embed a sample again, from disk
        bb = backbone_for(store)
        rng = np.random.default_rng(1)
        sample = rng.choice(len(col.originals), min(32, len(col.originals)), replace=False)
        from cbir.data.images import decode, read_bytes

        batch = np.stack(
            [bb.preprocess(decode(read_bytes(col.originals[i]), col.originals[i])) for i in sample]
        )
        again, _ = bb.run(batch)
        diff = float(np.abs(again - feats[sample]).max())
        if diff > FEATURE_TOLERANCE:
            raise CbirError(
                f"the cached Fashion-MNIST features differ from the files under {col.root} by"
                f" {diff:.2g}; delete {cache_dir('features')} and {col.root} and run again"
            )
        # the originals' ImageNet classes: the fp32 classifier on the cached features (for
        # the int8 backbone too, whose quantised head gives nearly the same)
        w, b = _imagenet_head()
        todo = [i for i, p in enumerate(col.originals) if p not in have]
        log(f"committing {len(todo)} originals into {index_dir} ({len(have)} already there)")
        for s in range(0, len(todo), chunk):
            idx = todo[s : s + chunk]
            f = feats[idx]
            classes = top_classes(f @ w.T + b)
            added = []
            for k, i in enumerate(idx):
                p = col.originals[i]
                data = Path(p).read_bytes()
                st = os.stat(p)
                with Image.open(p) as im:
                    wh = im.size
                added.append(
                    NewImage(
                        p,
                        hashlib.sha256(data).hexdigest(),
                        len(data),
                        st.st_mtime_ns,
                        wh[0],
                        wh[1],
                        extra={"imagenet": classes[k]},
                    )
                )
            store.commit(added, f)
    finally:
        store.close()
    return time.perf_counter() - t0, len(sample), diff


def build_index(
    col: Collection,
    index_dir: str | os.PathLike[str],
    index_type: str = "HNSW32",
    log: Log = _quiet,
    backbone: str | None = None,
) -> BuildInfo:
    """The index of every file of ``col`` (reused when complete), built as described above
    with ``backbone`` (a registry spec; default efficientnet-lite0)."""
    from cbir.index.store import IndexStore
    from cbir.pipeline import index_folder

    index_dir = Path(index_dir)
    done = index_dir / "built.json"
    if done.exists() and IndexStore.exists(index_dir):
        with open(done) as f:
            info = BuildInfo(**json.load(f))
        store = IndexStore.open(index_dir)
        try:  # (a compaction after the build may leave the faiss file a generation behind:
            ok = store.count() == len(col)  # readers bring it up to date themselves)
        finally:
            store.close()
        if ok and info.images == len(col) and info.index_type == index_type:
            info.reused = True
            return info
    info = BuildInfo(str(index_dir), len(col), index_type)
    info.commit_seconds, info.feature_check_n, info.feature_check_max_diff = commit_originals(
        col, index_dir, index_type, log=log, backbone=backbone
    )
    log(f"cbir index {col.root} --index {index_dir} (embeds the {len(col.copies)} copies)")
    s = index_folder(
        col.root, index_dir, index_type=index_type, size=224, progress=False, backbone=backbone
    )
    if s.failed or s.total != len(col):
        raise CbirError(f"{index_dir}: indexed {s.total} of {len(col)} images ({s.failed[:3]})")
    info.cbir_index_seconds, info.embedded, info.embedded_per_s = (
        s.seconds,
        s.indexed,
        s.embedded_per_s,
    )
    atomic_write_json(done, info.to_dict())
    return info


def default_root() -> Path:
    """Where the load collection and its index live: ``$CBIR_CACHE/load``."""
    return cache_dir("load")


#: The load benchmark's collection: 70,000 Fashion-MNIST files + 30,000 transformed copies.
LOAD_COPIES = 30_000
LOAD_INDEX_TYPE = "HNSW32"


def collection_name(n_copies: int = LOAD_COPIES, limit: dict[str, int] | None = None) -> str:
    """The folder name (under :func:`default_root`) of a load collection."""
    n = (70_000 if limit is None else sum(limit.values())) + n_copies
    return f"fashion-{n // 1000}k" if n % 1000 == 0 else f"fashion-{n}"


def load_index(
    index_type: str = LOAD_INDEX_TYPE,
    n_copies: int = LOAD_COPIES,
    limit: dict[str, int] | None = None,
    log: Log = _quiet,
    backbone: str | None = None,
) -> tuple[Path, BuildInfo]:
    """The load index under ``$CBIR_CACHE/load`` (built on first use): by default the
    100,000 images; ``limit`` (images per split) and ``n_copies`` make a smaller one;
    ``backbone`` (a registry spec) another backbone than efficientnet-lite0 (its own index,
    named after it, over the same files)."""
    name = collection_name(n_copies, limit)
    col = write_collection(default_root() / name, n_copies=n_copies, limit=limit, log=log)
    suffix = f"-{backbone}" if backbone else ""
    index_dir = default_root() / f"{name}-{index_type.replace(',', '_')}{suffix}.idx"
    return index_dir, build_index(col, index_dir, index_type, log=log, backbone=backbone)

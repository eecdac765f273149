"""Feature cache for datasets: backbone features computed once, memory-mapped after.

Keyed by the backbone fingerprint (name, weights digest, preprocessing) and by the
split's item keys, under ``$CBIR_CACHE/features/``. Written atomically. A subset of a
split whose features are cached is sliced from that cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

from cbir.backbones.embed import embed_stream
from cbir.backbones.registry import DEFAULT, open_backbone
from cbir.data.base import ImageSet
from cbir.errors import CbirError
from cbir.utils import atomic_write_json, cache_dir, fsync_dir


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def cache_path(images: ImageSet, fingerprint: dict) -> Path:
    """Where the features of ``images`` under ``fingerprint`` are cached."""
    keys = hashlib.sha256("\n".join(images.keys).encode()).hexdigest()[:16]
    name = images.name.replace("/", "_")
    return cache_dir("features", _digest(fingerprint)) / f"{name}-{len(images)}-{keys}.npy"


def _failed_path(path: Path) -> Path:
    return path.with_name(path.name + ".failed.json")


def _raise_failed(images: ImageSet, path: Path, idx: np.ndarray) -> None:
    """Raise for the first of ``idx`` (positions in the cached set) that failed to decode."""
    record = _failed_path(path)
    if not record.exists():
        return
    failed = dict(json.loads(record.read_text())["failed"])
    where = {int(j): k for k, j in enumerate(idx)}
    for j in sorted(failed):
        if j in where:
            raise CbirError(f"{images.name} item {where[j]}: {failed[j]}")


def dataset_features(
    images: ImageSet,
    size: int = 224,
    mode: str = "crop",
    batch_size: int = 128,
    workers: int = 2,
    progress: bool | None = None,
    weights: str | os.PathLike[str] | None = None,
    skip_failed: bool = False,
    backbone: str = DEFAULT,
) -> np.ndarray:
    """Backbone features ``(n, dim)`` of every image in ``images`` (cached, memory-mapped).

    ``weights``: a fine-tuned backbone's state-dict file (default: the ImageNet weights).
    ``skip_failed``: an image that cannot be decoded (corrupt, over ``CBIR_MAX_PIXELS``)
    gets a row of NaN instead of stopping the run, as ``cbir index`` skips it; the cache
    remembers which (``<cache>.failed.json``). Without it such an image is a
    :class:`CbirError`, cached or not.
    ``backbone``: a registry spec (default ``efficientnet-lite0``).
    """
    backbone = open_backbone(backbone, size=size, mode=mode, weights=weights)
    path = cache_path(images, backbone.fingerprint)
    if path.exists():
        if not skip_failed:
            _raise_failed(images, path, np.arange(len(images)))
        return np.load(path, mmap_mode="r")
    parent, idx = images.root()
    if parent is not images:
        ppath = cache_path(parent, backbone.fingerprint)
        if ppath.exists():  # a subset of a cached split: slice it, embed nothing
            if not skip_failed:
                _raise_failed(images, ppath, idx)
            return np.asarray(np.load(ppath, mmap_mode="r")[idx])
    n = len(images)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, backbone.dim))
    show = sys.stderr.isatty() if progress is None else progress
    bar = None
    if show:
        from tqdm import tqdm

        bar = tqdm(total=n, unit="img", desc=f"features {images.name}", file=sys.stderr)

    def prepare(i: int):
        return backbone.preprocess(images.load(i)), None

    failed: list[list] = []
    try:
        for batch in embed_stream(range(n), prepare, backbone.run, batch_size, workers):
            if batch.failed and not skip_failed:
                i, err = batch.failed[0]
                raise CbirError(f"{images.name} item {i}: {err}")
            for i, err in batch.failed:
                out[i] = np.nan
                failed.append([int(i), str(err)])
            rows = [i for i, _, _ in batch.ok]
            if rows:
                out[rows] = batch.features
            if bar is not None:
                bar.update(len(rows) + len(batch.failed))
        if failed:  # written before the features: no cache without its record
            atomic_write_json(_failed_path(path), {"failed": failed})
        else:
            _failed_path(path).unlink(missing_ok=True)  # a stale one, from a deleted cache
        out.flush()
        del out
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if bar is not None:
            bar.close()
        if tmp.exists():
            tmp.unlink()
    return np.load(path, mmap_mode="r")

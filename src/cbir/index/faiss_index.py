"""Float vector indexes on faiss: any index_factory string, inner product, ids kept.

Every index is wrapped in ``IndexIDMap2`` so ids are the store's stable ids, and
``remove_ids`` works wherever the inner index supports it (Flat, IVF); HNSW cannot
remove, so the store rebuilds it from the stored features instead.
"""

from __future__ import annotations

import re
from pathlib import Path

import faiss
import numpy as np

from cbir.errors import CbirError
from cbir.utils import atomic_write_bytes


def _min_train(index_type: str) -> int:
    """Fewest training vectors faiss needs for this factory string (0 if untrained)."""
    need = 0
    for m in re.finditer(r"IVF(\d+)", index_type):
        need = max(need, int(m.group(1)))
    for m in re.finditer(r"PQ(\d+)(?:x(\d+))?", index_type):
        nbits = int(m.group(2) or 8)
        need = max(need, 2**nbits)
    return need


def make_float_index(index_type: str, dim: int) -> faiss.Index:
    """A faiss index for ``index_type`` (e.g. "Flat", "HNSW32", "IVF1024,PQ32"), with ids."""
    spec = index_type.removeprefix("IDMap2,").removeprefix("IDMap,")
    try:
        inner = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else str(e)
        raise CbirError(
            f"--index-type {index_type!r} is not a faiss index_factory string for {dim}-d vectors"
            f" ({first}); try 'Flat', 'HNSW32' or 'IVF1024,PQ32'"
        ) from None
    return faiss.IndexIDMap2(inner)


def train_if_needed(index: faiss.Index, sample: np.ndarray, index_type: str) -> None:
    """Train ``index`` on ``sample`` when its type needs training."""
    if index.is_trained:
        return
    need = _min_train(index_type)
    if len(sample) < need:
        raise CbirError(
            f"index type {index_type!r} needs at least {need} vectors to train, the collection has"
            f" {len(sample)}; use --index-type Flat (exact) or a smaller IVF/PQ setting"
        )
    index.train(np.ascontiguousarray(sample, dtype=np.float32))


def index_ids(index: faiss.Index) -> np.ndarray:
    """The ids stored in an ``IndexIDMap2``."""
    return faiss.vector_to_array(index.id_map).astype(np.int64)


def try_remove(index: faiss.Index, ids: np.ndarray) -> bool:
    """Remove ``ids``; False when the index type cannot remove (caller rebuilds)."""
    if len(ids) == 0:
        return True
    try:
        index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64))
    except RuntimeError:
        return False
    return True


def write_index(index: faiss.Index, path: str | Path) -> None:
    """Write a faiss index atomically (temp file, fsync, rename)."""
    data = faiss.serialize_index(index)
    atomic_write_bytes(path, data.tobytes())


def read_index(path: str | Path) -> faiss.Index:
    """Read a faiss index written by :func:`write_index`."""
    return faiss.read_index(str(path))

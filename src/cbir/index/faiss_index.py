"""Float vector indexes on faiss: any index_factory string, inner product, ids kept.

Indexes carry the store's stable ids: IVF indexes natively (``add_with_ids``), others
wrapped in ``IndexIDMap2`` (whose ``remove_ids`` assumes Flat-style renumbering, wrong
for IVF, hence IVF is never wrapped). HNSW cannot remove, so the store rebuilds it from
the stored features instead.
"""

from __future__ import annotations

import re
from pathlib import Path

import faiss
import numpy as np

from cbir.errors import CbirError
from cbir.utils import atomic_write


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
    if _ivf(inner) is not None:
        return inner
    return faiss.IndexIDMap2(inner)


def _ivf(index: faiss.Index):
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


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
    """The ids stored in an index made by :func:`make_float_index`."""
    if hasattr(index, "id_map"):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    ivf = _ivf(index)
    inv = ivf.invlists
    parts = [
        faiss.rev_swig_ptr(inv.get_ids(i), inv.list_size(i)).copy()
        for i in range(ivf.nlist)
        if inv.list_size(i)
    ]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


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
    """Write a faiss index atomically (temp file, fsync, rename), streamed: no copy of
    the index is made in memory (a 1M-vector Flat index is 5 GB)."""
    atomic_write(path, lambda f: faiss.write_index(index, faiss.PyCallbackIOWriter(f.write)))


def read_index(path: str | Path) -> faiss.Index:
    """Read a faiss index written by :func:`write_index`."""
    return faiss.read_index(str(path))


def set_search_params(
    index: faiss.Index, nprobe: int | None = None, ef_search: int | None = None
) -> None:
    """Set IVF ``nprobe`` (default min(nlist, 32)) and HNSW ``efSearch`` (default 64).

    faiss's own defaults (nprobe=1, efSearch=16) trade too much recall for speed.
    """
    inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else index
    ivf = _ivf(inner)
    if ivf is not None:
        ivf.nprobe = nprobe or min(ivf.nlist, 32)
    if hasattr(inner, "hnsw"):
        inner.hnsw.efSearch = ef_search or 64

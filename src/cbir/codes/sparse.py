"""Sparse codes: L2-normalised CSR rows in an inverted index; score: cosine (dot product)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from cbir.codes.base import CodeKind
from cbir.index.sparse import load_sparse_index, make_sparse_index

#: Rows encoded at a time (the dense pre-activations of one batch are ``batch x dim``).
ENCODE_BATCH = 4096


def sparse_codes(u: np.ndarray, activation: str, k: int | None = None) -> sp.csr_matrix:
    """Head outputs ``(n, dim)`` -> L2-normalised sparse codes (float32 CSR).

    ``activation``: "topk" (the ``k`` largest, then ReLU; Makhzani & Frey, "k-Sparse
    Autoencoders", ICLR 2014) or "relu" (ReLU; with ``k``, only the ``k`` largest positive
    units are kept).
    """
    u = np.asarray(u, np.float32)
    n, dim = u.shape
    if activation not in ("topk", "relu"):
        raise ValueError(f"unknown sparse activation {activation!r}")
    if k is not None and 0 < k < dim:
        idx = np.argpartition(-u, k - 1, axis=1)[:, :k]
        vals = np.take_along_axis(u, idx, axis=1)
    else:
        idx = np.broadcast_to(np.arange(dim), (n, dim))
        vals = u
    vals = np.maximum(vals, 0.0)
    keep = vals > 0
    counts = keep.sum(1)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    m = sp.csr_matrix((vals[keep], idx[keep].astype(np.int32), indptr), shape=(n, dim))
    m.sort_indices()
    norms = np.sqrt(np.asarray(m.multiply(m).sum(1)).ravel())
    m = sp.diags(1.0 / np.maximum(norms, 1e-12)).astype(np.float32) @ m
    return sp.csr_matrix(m, dtype=np.float32)


class SparseCodes(CodeKind):
    """float32 CSR rows in :class:`cbir.index.sparse.SparseIndex` (posting lists, exact);
    score: the sparse dot product, i.e. cosine of unit rows."""

    name: ClassVar[str] = "sparse"
    ext: ClassVar[str] = "sidx"
    default_index_type: ClassVar[str] = "Inverted"
    exact_type: ClassVar[str] = "Inverted"
    shardable: ClassVar[bool] = False
    float_queries: ClassVar[bool] = False
    milvus_vector: ClassVar[str | None] = None

    def empty(self, dim: int) -> Any:
        return sp.csr_matrix((0, dim), dtype=np.float32)

    def encode(self, transform: Any, features: np.ndarray) -> sp.csr_matrix:
        """Codes a batch at a time (the dense ``n x dim`` pre-activations never held at once)."""
        spec = transform.ckpt["sparse"]
        x = np.asarray(features, np.float32)
        parts = [
            sparse_codes(
                transform.outputs(x[i : i + ENCODE_BATCH]), spec["activation"], spec.get("k")
            )
            for i in range(0, len(x), ENCODE_BATCH)
        ]
        if not parts:
            return self.empty(transform.dim)
        return sp.vstack(parts, format="csr", dtype=np.float32)

    def float_view(self, transform: Any, features: np.ndarray) -> np.ndarray:
        return self.encode(transform, features).toarray()

    def scores(self, q: Any, db: Any, dim: int) -> np.ndarray:
        s = q @ db.T
        return np.asarray(s.toarray() if hasattr(s, "toarray") else s)

    def make(self, index_type: str, dim: int) -> Any:
        return make_sparse_index(index_type, dim)

    def read(self, path: str | Path) -> Any:
        return load_sparse_index(path)

    def train(self, index: Any, sample: Any, index_type: str) -> None:
        """An inverted index needs no training."""

    def remove(self, index: Any, ids: np.ndarray) -> bool:
        index.remove_ids(ids)
        return True

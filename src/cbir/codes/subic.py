"""SUBIC codes: M blocks of K-way one-hot (Jain, Zepeda, Pérez, Gribonval, "SUBIC: A
supervised, structured binary code for image search", ICCV 2017).

A trained SUBIC head outputs ``M * K`` logits; a block softmax turns each block of ``K``
into a probability vector. The database keeps, per block, only its active index (the
argmax: ``M log2 K`` bits of information, one byte per block here); a query keeps its
block-softmax scores. Two searches (Sec. 3.3 of the paper):

- asymmetric (``--index-type ADC``, the default): score = the mean over blocks of the
  query's probability at the database code's active index, i.e. the inner product of the
  query's block softmax with the database's one-hot code, divided by M;
- symmetric (``--index-type SDC``): the query is made one-hot too, so the score is the
  fraction of blocks whose active indices agree.

The index is a faiss ``IndexPQ`` (inner product, 8-bit sub-quantisers) whose codebook of
block m is the identity of ``R^K``: encoding a row picks each block's argmax, and faiss's
asymmetric distance computation (a lookup table per query) is the SUBIC asymmetric
score. Scores are in [0, 1], higher is better. One code kind per block size ``K``
(``subic-k256``, ...), so the kind alone says how codes split into blocks.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import faiss
import numpy as np

from cbir.codes.base import CodeKind, Ranked, l2_normalize
from cbir.errors import CbirError
from cbir.utils import atomic_write_bytes

MAGIC = b"CBIR-SUBIC-1\n"
MODES = ("ADC", "SDC")
#: Block sizes that have a code kind (2^1 .. 2^8: one byte holds a block's index).
BLOCK_SIZES = tuple(2**b for b in range(1, 9))
#: Coordinates of the unused centroids (K < 256): far from every probability vector.
_FAR = 1e4


def block_softmax(u: np.ndarray, k: int) -> np.ndarray:
    """Rows ``(n, M*K)`` of logits -> block softmax: each block of ``k`` sums to 1 (float32)."""
    u = np.asarray(u, np.float32)
    z = u.reshape(len(u), -1, k)
    z = np.exp(z - z.max(axis=2, keepdims=True))
    z /= z.sum(axis=2, keepdims=True)
    return z.reshape(len(u), -1)


def active(rows: np.ndarray, k: int) -> np.ndarray:
    """``(n, M)`` uint8: the active (largest) index of each block of ``k`` columns."""
    rows = np.asarray(rows)
    return rows.reshape(len(rows), -1, k).argmax(axis=2).astype(np.uint8)


def one_hot(rows: np.ndarray, k: int) -> np.ndarray:
    """Each block of ``k`` columns made one-hot at its largest entry (float32)."""
    idx = active(rows, k)
    out = np.zeros((len(idx), idx.shape[1], k), np.float32)
    np.put_along_axis(out, idx[:, :, None].astype(np.int64), 1.0, axis=2)
    return out.reshape(len(idx), -1)


def asymmetric_scores(q: np.ndarray, codes: np.ndarray, k: int) -> np.ndarray:
    """``(len(q), len(codes))`` SUBIC scores: ``mean_m q[i, m, codes[j, m]]``.

    ``q``: block-softmax (or one-hot, for symmetric scores) rows ``(n, M*K)``;
    ``codes``: the ``(N, M)`` active indices of the database."""
    q = np.asarray(q, np.float32)
    qb = q.reshape(len(q), -1, k)
    m = qb.shape[1]
    codes = np.asarray(codes)
    out = np.zeros((len(q), len(codes)), np.float32)
    for b in range(m):
        out += qb[:, b, :][:, codes[:, b]]
    return out / m


class SubicIndex:
    """SUBIC codes under int64 ids: a faiss ``IndexIDMap2(IndexPQ)`` with identity
    codebooks (see module doc), searched asymmetrically (ADC) or symmetrically (SDC)."""

    def __init__(self, mode: str, dim: int, k: int, index: Any = None) -> None:
        if mode not in MODES:
            raise CbirError(
                f"--index-type {mode!r} is not an index for SUBIC codes; use ADC (asymmetric,"
                " the default) or SDC (symmetric)"
            )
        if dim <= 0 or dim % k:
            raise CbirError(f"SUBIC codes of {dim} columns cannot split into blocks of {k}")
        self.spec, self.mode, self.dim, self.k = mode, mode, int(dim), int(k)
        self.blocks = self.dim // self.k
        self.is_trained = True
        self.index = index if index is not None else faiss.IndexIDMap2(self._pq())

    def _pq(self) -> Any:
        pq = faiss.IndexPQ(self.dim, self.blocks, 8, faiss.METRIC_INNER_PRODUCT)
        cents = np.full((self.blocks, 256, self.k), _FAR, np.float32)
        cents[:, : self.k, :] = np.eye(self.k, dtype=np.float32)
        faiss.copy_array_to_vector(cents.ravel(), pq.pq.centroids)
        pq.is_trained = True
        return pq

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def codes(self) -> np.ndarray:
        """``(ntotal, M)`` uint8: the active index of every block of every stored code."""
        pq = faiss.downcast_index(self.index.index)
        return faiss.vector_to_array(pq.codes).reshape(self.ntotal, self.blocks)

    def add_with_ids(self, x: np.ndarray, ids: np.ndarray) -> None:
        self.index.add_with_ids(np.ascontiguousarray(x, np.float32), ids)

    def remove_ids(self, ids: np.ndarray) -> int:
        return int(self.index.remove_ids(np.ascontiguousarray(ids, np.int64)))

    def queries(self, q: np.ndarray) -> np.ndarray:
        """Query rows as searched: block softmax (ADC) or one-hot (SDC)."""
        q = np.ascontiguousarray(q, np.float32)
        return one_hot(q, self.k) if self.mode == "SDC" else q

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores in [0, 1], ids) of the top ``k`` by the mode's score."""
        raw, ids = self.index.search(self.queries(q), k)
        return raw / self.blocks, ids

    def search_among(self, q: np.ndarray, k: int, allowed: np.ndarray) -> Ranked:
        """Exact top ``k`` among the stored ``allowed`` ids (ids -1 pad)."""
        ids = self.ids()
        keep = np.flatnonzero(np.isin(ids, allowed))
        return top_k(asymmetric_scores(self.queries(q), self.codes()[keep], self.k), ids[keep], k)

    def save(self, path: str | Path) -> None:
        head = json.dumps({"mode": self.mode, "dim": self.dim, "k": self.k}).encode()
        body = faiss.serialize_index(self.index).tobytes()
        atomic_write_bytes(Path(path), MAGIC + head + b"\n" + body)


def top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> Ranked:
    """The ``k`` best columns of each row of ``scores`` (ids -1 and score -inf pad)."""
    nq, n = scores.shape
    kk = min(k, n)
    out_s = np.full((nq, k), -np.inf, np.float64)
    out_i = np.full((nq, k), -1, np.int64)
    if kk:
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        s = np.take_along_axis(scores, part, axis=1)
        order = np.argsort(-s, axis=1, kind="stable")
        out_s[:, :kk] = np.take_along_axis(s, order, axis=1)
        out_i[:, :kk] = ids[np.take_along_axis(part, order, axis=1)]
    return out_s, out_i, None


def load_subic_index(path: str | Path) -> SubicIndex:
    """The index :meth:`SubicIndex.save` wrote to ``path``."""
    data = Path(path).read_bytes()
    if not data.startswith(MAGIC):
        raise CbirError(f"{path}: not a SUBIC index file; rebuild it with `cbir index`")
    head, _, body = data[len(MAGIC) :].partition(b"\n")
    meta = json.loads(head)
    index = faiss.deserialize_index(np.frombuffer(body, np.uint8))
    return SubicIndex(meta["mode"], meta["dim"], meta["k"], index)


class SubicCodes(CodeKind):
    """SUBIC codes of block size ``k`` (see module doc): the head's block softmax; the
    index stores each block's active index; score in [0, 1] (ADC or SDC)."""

    ext: ClassVar[str] = "subic"
    width_option: ClassVar[str] = "bits"  # a run's width: bits of information, M log2 K
    default_index_type: ClassVar[str] = "ADC"
    exact_type: ClassVar[str] = "ADC"
    rerankable: ClassVar[bool] = False
    shardable: ClassVar[bool] = False
    float_queries: ClassVar[bool] = False
    milvus_vector: ClassVar[str | None] = None

    def __init__(self, k: int) -> None:
        if k not in BLOCK_SIZES:
            raise ValueError(f"SUBIC block size {k}: use one of {BLOCK_SIZES}")
        self.k = int(k)
        self.name = f"subic-k{k}"  # type: ignore[misc]

    def describe(self, dim: int) -> str:
        m = dim // self.k
        return f"{m} blocks of {self.k} ({m * (self.k.bit_length() - 1)} bits)"

    def check_rows(self, codes: Any, dim: int) -> np.ndarray:
        v = super().check_rows(codes, dim)
        if dim % self.k:
            raise CbirError(f"SUBIC codes of {dim} columns cannot split into blocks of {self.k}")
        return v

    def encode(self, transform: Any, features: np.ndarray) -> np.ndarray:
        return block_softmax(transform.outputs(features), self.k)

    def float_view(self, transform: Any, features: np.ndarray) -> np.ndarray:
        return l2_normalize(self.encode(transform, features))

    def scores(self, q: Any, db: Any, dim: int) -> np.ndarray:
        """Asymmetric scores of block-softmax ``q`` against ``db`` (as the index keeps it)."""
        return asymmetric_scores(q, active(db, self.k), self.k).astype(np.float64)

    def eval_scorer(self, q: Any, db: Any) -> Callable[[np.ndarray], np.ndarray] | None:
        codes = active(db, self.k)
        return lambda rows: asymmetric_scores(q[rows], codes, self.k)

    def make(self, index_type: str, dim: int) -> SubicIndex:
        return SubicIndex(index_type.strip().upper(), dim, self.k)

    def read(self, path: str | Path) -> SubicIndex:
        return load_subic_index(path)

    def train(self, index: Any, sample: Any, index_type: str) -> None:
        """The codebooks are fixed (identity blocks): nothing to train."""

    def remove(self, index: Any, ids: np.ndarray) -> bool:
        index.remove_ids(ids)
        return True

    def search_raw(self, index: Any, q: Any, k: int, **kw: Any) -> tuple[np.ndarray, np.ndarray]:
        return index.search(q, k)

    def search_among(self, index: Any, q: Any, k: int, allowed: np.ndarray) -> Ranked | None:
        return index.search_among(q, k, allowed)

    def rescore(self, q: Any, codes: Any, ids: np.ndarray, k: int, dim: int) -> Ranked:
        return top_k(self.scores(q, codes, dim), np.asarray(ids, np.int64), min(k, len(ids)))


#: One code kind per block size.
SUBIC_KINDS: tuple[SubicCodes, ...] = tuple(SubicCodes(k) for k in BLOCK_SIZES)

__all__ = ["SUBIC_KINDS", "SubicCodes", "SubicIndex", "active", "block_softmax", "one_hot"]

"""Binary (Hamming) indexes over packed codes, with the store's ids, and a two-stage search.

One interface over faiss's binary indexes and our multi-index hashing:

- ``BFlat`` (default, also ``flat``): faiss ``IndexBinaryFlat`` in ``IndexBinaryIDMap2``,
  an exact scan. Codes are kept in id order, so faiss's ties (by position) are ties by id.
- ``BIVF<nlist>[,nprobe=P]``: faiss ``IndexBinaryIVF`` (approximate; needs training).
- ``BHNSW<M>[,ef=E]``: faiss ``IndexBinaryHNSW`` (approximate; cannot remove).
- ``MIH`` / ``MIH<m>``: exact k-NN by multi-index hashing (Norouzi, Punjani & Fleet,
  CVPR 2012), :mod:`cbir.index.mih`; ``m`` defaults to
  ``1.25 bits / log2(n)`` (measured; see ``default_m``).

Every index answers ``search`` with ``(D int32 (n, k), I int64 (n, k))`` ascending by
(Hamming distance, id), padded with ``INT32_MAX`` / ``-1``; the exact ones (BFlat, MIH)
return exactly what a brute-force scan returns, ties included. ``range_search`` returns
per query ``(ids, distances)`` of the codes within the radius (inclusive).

Codes are packed as faiss packs them: ``uint8`` rows of ``bits // 8`` bytes, bit ``j``
in byte ``j // 8`` at position ``j % 8``.

:func:`rerank` is the second stage of a two-stage search (a Hamming shortlist, then exact
cosine on the stored float features), as in deep hashing retrieval systems (e.g. Lin et
al., "Deep Learning of Binary Hash Codes for Fast Image Retrieval", CVPRW 2015: coarse
binary search, then fine re-ranking).
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

from cbir.codes.bits import check_codes, popcount
from cbir.errors import CbirError
from cbir.index.mih import INT32_MAX, MultiIndexHash
from cbir.utils import atomic_write_bytes

__all__ = [
    "BinaryIndex",
    "FaissBinaryIndex",
    "MIHIndex",
    "load_binary_index",
    "make_binary_index",
    "rerank",
    "two_stage_search",
]

SPECS_HELP = (
    "'BFlat' (exact scan), 'MIH' or 'MIH<m>' (exact), 'BIVF<nlist>[,nprobe=P]', 'BHNSW<M>[,ef=E]'"
)
DEFAULT_EF = 64
_SPEC = re.compile(r"^(BFLAT|FLAT|MIH(\d*)|BIVF(\d+)|BHNSW(\d+))((?:,\w+=\d+)*)$")


def _sort_rows(D: np.ndarray, I: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row ordered by (distance, id), padding (-1) last."""
    pad = I < 0
    d = np.where(pad, np.int64(INT32_MAX) + 1, D.astype(np.int64))
    i = np.where(pad, np.iinfo(np.int64).max, I)
    o = np.lexsort((i, d), axis=1) if D.size else np.zeros(D.shape, np.intp)
    D = np.take_along_axis(D, o, axis=1)
    I = np.take_along_axis(I, o, axis=1)
    D[I < 0] = INT32_MAX
    return D.astype(np.int32, copy=False), I.astype(np.int64, copy=False)


class BinaryIndex(ABC):
    """A Hamming index over packed codes, keyed by int64 ids."""

    spec: str
    bits: int

    @property
    @abstractmethod
    def ntotal(self) -> int:
        """Number of codes stored."""

    @property
    def is_trained(self) -> bool:
        return True

    def train(self, sample_codes: np.ndarray) -> None:
        """Train on a sample of codes (a no-op for indexes that need no training)."""
        return None

    @abstractmethod
    def add_with_ids(self, codes: np.ndarray, ids: np.ndarray) -> None:
        """Add packed codes under the given int64 ids."""

    @abstractmethod
    def remove_ids(self, ids: np.ndarray) -> int:
        """Remove the codes with these ids; RuntimeError where the type cannot remove."""

    @abstractmethod
    def ids(self) -> np.ndarray:
        """The ids stored (int64)."""

    @abstractmethod
    def _search(self, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    @abstractmethod
    def _range(self, codes: np.ndarray, radius: int) -> list[tuple[np.ndarray, np.ndarray]]: ...

    @abstractmethod
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the index atomically (temp file, fsync, rename)."""

    @abstractmethod
    def nbytes(self) -> int:
        """Size of the index (bytes), for bytes-per-image comparisons."""

    def search(self, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """k nearest codes by Hamming distance: ``(D int32 (n, k), I int64 (n, k))``."""
        codes = np.ascontiguousarray(check_codes(codes, self.bits, "queries"))
        k = int(k)
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        n = len(codes)
        kk = min(k, self.ntotal)
        if kk == 0 or n == 0:
            return np.full((n, k), INT32_MAX, np.int32), np.full((n, k), -1, np.int64)
        D, I = self._search(codes, kk)
        if kk < k:
            D = np.concatenate([D, np.full((n, k - kk), INT32_MAX, np.int32)], axis=1)
            I = np.concatenate([I, np.full((n, k - kk), -1, np.int64)], axis=1)
        return D, I

    def range_search(self, codes: np.ndarray, radius: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query, ``(ids int64, distances int32)`` of every code within ``radius``
        (inclusive), ordered by (distance, id)."""
        codes = np.ascontiguousarray(check_codes(codes, self.bits, "queries"))
        empty = (np.zeros(0, np.int64), np.zeros(0, np.int32))
        if int(radius) < 0 or self.ntotal == 0:
            return [empty for _ in range(len(codes))]
        return self._range(codes, int(radius))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r}, bits={self.bits}, ntotal={self.ntotal})"


class MIHIndex(BinaryIndex):
    """Exact k-NN by multi-index hashing (Norouzi et al. 2012); see :mod:`cbir.index.mih`."""

    def __init__(self, bits: int, m: int | None = None, mih: MultiIndexHash | None = None):
        self.bits = int(bits)
        self.mih = mih if mih is not None else MultiIndexHash(bits, m)
        self.spec = f"MIH{m}" if self.mih.m_requested else "MIH"

    @property
    def ntotal(self) -> int:
        return self.mih.ntotal

    def add_with_ids(self, codes: np.ndarray, ids: np.ndarray) -> None:
        self.mih.add(codes, np.asarray(ids, np.int64))

    def remove_ids(self, ids: np.ndarray) -> int:
        return self.mih.remove_ids(np.asarray(ids, np.int64))

    def ids(self) -> np.ndarray:
        return self.mih.ids()

    def _search(self, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.mih.search(codes, k)

    def _range(self, codes: np.ndarray, radius: int) -> list[tuple[np.ndarray, np.ndarray]]:
        lims, D, I = self.mih.range_search(codes, radius)
        return [(I[a:b], D[a:b]) for a, b in zip(lims[:-1], lims[1:], strict=True)]

    def save(self, path: str | os.PathLike[str]) -> Path:
        return self.mih.save(path)

    def nbytes(self) -> int:
        return self.mih.nbytes()


class FaissBinaryIndex(BinaryIndex):
    """A faiss binary index (flat, IVF or HNSW) that carries the store's ids.

    Flat and HNSW are wrapped in ``IndexBinaryIDMap2``; IVF stores ids itself. Flat keeps
    its codes in id order so that faiss's tie order (by position) is the order by id.
    """

    def __init__(self, index: faiss.IndexBinary, spec: str) -> None:
        self.index = index
        self.spec = spec
        self.bits = int(index.d)
        self.kind = spec.split(",")[0].rstrip("0123456789").upper()

    @property
    def inner(self) -> faiss.IndexBinary:
        """The faiss index without its id map."""
        if isinstance(self.index, faiss.IndexBinaryIDMap2):
            return faiss.downcast_IndexBinary(self.index.index)
        return self.index

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained)

    def train(self, sample_codes: np.ndarray) -> None:
        if self.index.is_trained:
            return
        nlist = int(self.inner.nlist)
        sample = np.asarray(sample_codes)
        if len(sample) < nlist:
            raise CbirError(
                f"index type {self.spec!r} needs at least {nlist} codes to train, the collection"
                f" has {len(sample)}; use --index-type BFlat or MIH (exact) or a smaller BIVF"
            )
        self.index.train(np.ascontiguousarray(check_codes(sample, self.bits, "training codes")))

    def ids(self) -> np.ndarray:
        if isinstance(self.index, faiss.IndexBinaryIDMap2):
            return faiss.vector_to_array(self.index.id_map).astype(np.int64)
        inv = self.index.invlists
        parts = [
            faiss.rev_swig_ptr(inv.get_ids(i), inv.list_size(i)).copy()
            for i in range(self.index.nlist)
            if inv.list_size(i)
        ]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    def add_with_ids(self, codes: np.ndarray, ids: np.ndarray) -> None:
        codes = np.ascontiguousarray(check_codes(codes, self.bits))
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) != len(codes):
            raise ValueError(f"got {len(codes)} codes but {len(ids)} ids")
        if len(ids) == 0:
            return
        if self.kind != "BFLAT":
            self.index.add_with_ids(codes, ids)
            return
        # keep positions in id order (stable: equal ids stay in insertion order)
        o = np.argsort(ids, kind="stable")
        codes, ids = codes[o], ids[o]
        old = self.ids()
        if len(old) and ids[0] < old.max():
            flat = self.inner
            old_codes = faiss.vector_to_array(flat.xb).reshape(len(old), self.bits // 8)
            all_ids = np.concatenate([old, ids])
            o = np.argsort(all_ids, kind="stable")
            codes = np.ascontiguousarray(np.concatenate([old_codes, codes])[o])
            ids = np.ascontiguousarray(all_ids[o])
            self.index.reset()
        self.index.add_with_ids(codes, ids)

    def remove_ids(self, ids: np.ndarray) -> int:
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) == 0:
            return 0
        return int(self.index.remove_ids(ids))  # RuntimeError for HNSW: the caller rebuilds

    def _search(self, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        D, I = self.index.search(codes, k)
        return _sort_rows(D, I)

    def _range(self, codes: np.ndarray, radius: int) -> list[tuple[np.ndarray, np.ndarray]]:
        try:  # faiss keeps distances < radius
            lims, D, I = self.index.range_search(codes, radius + 1)
        except RuntimeError:  # HNSW: no range search in faiss; scan its stored codes
            return self._range_scan(codes, radius)
        out = []
        for a, b in zip(lims[:-1], lims[1:], strict=True):
            d = D[a:b].astype(np.int32)
            i = I[a:b].astype(np.int64)
            o = np.lexsort((i, d))
            out.append((i[o], d[o]))
        return out

    def _range_scan(self, codes: np.ndarray, radius: int) -> list[tuple[np.ndarray, np.ndarray]]:
        storage = faiss.downcast_IndexBinary(self.inner.storage)
        db = faiss.vector_to_array(storage.xb).reshape(-1, self.bits // 8)
        ids = self.ids()
        out = []
        for q in codes:
            d = popcount(db ^ q).sum(axis=1, dtype=np.int32)
            sel = np.flatnonzero(d <= radius)
            o = sel[np.lexsort((ids[sel], d[sel]))]
            out.append((ids[o], d[o]))
        return out

    def save(self, path: str | os.PathLike[str]) -> Path:
        return atomic_write_bytes(path, faiss.serialize_index_binary(self.index).tobytes())

    def nbytes(self) -> int:
        return int(faiss.serialize_index_binary(self.index).size)


def _parse(spec: str) -> tuple[str, int | None, dict[str, int]]:
    m = _SPEC.match(spec.strip().upper().replace(" ", ""))
    if m is None:
        raise CbirError(f"binary index type {spec!r} is not one of {SPECS_HELP}")
    base = m.group(1)
    opts = {}
    for part in filter(None, m.group(5).split(",")):
        key, value = part.split("=")
        opts[key.lower()] = int(value)
    if base in ("BFLAT", "FLAT"):
        return "BFLAT", None, opts
    if base.startswith("MIH"):
        return "MIH", int(m.group(2)) if m.group(2) else None, opts
    if base.startswith("BIVF"):
        return "BIVF", int(m.group(3)), opts
    return "BHNSW", int(m.group(4)), opts


def make_binary_index(spec: str, bits: int) -> BinaryIndex:
    """A new empty binary index for ``bits``-bit codes of type ``spec`` (see the module doc)."""
    bits = int(bits)
    if bits <= 0 or bits % 8:
        raise CbirError(f"binary codes must have a positive multiple of 8 bits, got {bits}")
    kind, param, opts = _parse(spec or "BFlat")
    allowed = {"BIVF": {"nprobe"}, "BHNSW": {"ef"}}.get(kind, set())
    extra = set(opts) - allowed
    if extra or (param is not None and param < 1):
        raise CbirError(f"binary index type {spec!r}: bad option or size; accepted: {SPECS_HELP}")
    if kind == "MIH":
        try:
            return MIHIndex(bits, param)
        except ValueError as e:
            raise CbirError(f"binary index type {spec!r}: {e}") from None
    if kind == "BFLAT":
        return FaissBinaryIndex(faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(bits)), "BFlat")
    if kind == "BIVF":
        index = faiss.index_binary_factory(bits, f"BIVF{param}")
        index.nprobe = min(opts.get("nprobe", 32), param)
        return FaissBinaryIndex(index, spec)
    inner = faiss.index_binary_factory(bits, f"BHNSW{param}")
    inner.hnsw.efSearch = opts.get("ef", DEFAULT_EF)
    return FaissBinaryIndex(faiss.IndexBinaryIDMap2(inner), spec)


def load_binary_index(path: str | os.PathLike[str]) -> BinaryIndex:
    """Read an index written by ``BinaryIndex.save``."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):  # an .npz archive: multi-index hashing
        mih = MultiIndexHash.load(path)
        return MIHIndex(mih.bits, mih.m_requested, mih=mih)
    index = faiss.read_index_binary(os.fspath(path))
    if isinstance(index, faiss.IndexBinaryIVF):
        return FaissBinaryIndex(index, f"BIVF{index.nlist},nprobe={index.nprobe}")
    inner = faiss.downcast_IndexBinary(index.index)
    if isinstance(inner, faiss.IndexBinaryHNSW):
        spec = f"BHNSW{inner.hnsw.nb_neighbors(1)},ef={inner.hnsw.efSearch}"
        return FaissBinaryIndex(index, spec)
    return FaissBinaryIndex(index, "BFlat")


def rerank(
    shortlist_ids: np.ndarray,
    query_float: np.ndarray,
    features_of_ids: Callable[[np.ndarray], np.ndarray],
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Second stage of a two-stage search: re-rank each query's shortlist by exact cosine.

    Args:
        shortlist_ids: (n, K') candidate ids from a Hamming search (-1 = none).
        query_float: (n, d) float query features.
        features_of_ids: maps a 1-d array of unique ids to their (len, d) stored features.
        k: results per query.

    Returns ``(scores float32 (n, k), ids int64 (n, k))`` by descending cosine, ties by
    id, padded with ``-inf`` / ``-1``.
    """
    shortlist_ids = np.atleast_2d(np.asarray(shortlist_ids, dtype=np.int64))
    q = np.atleast_2d(np.asarray(query_float, dtype=np.float32))
    n = len(shortlist_ids)
    if len(q) != n:
        raise ValueError(f"{len(q)} query vectors for {n} shortlists")
    scores = np.full((n, k), -np.inf, np.float32)
    ids = np.full((n, k), -1, np.int64)
    uniq = np.unique(shortlist_ids[shortlist_ids >= 0])
    if len(uniq) == 0 or k <= 0:
        return scores, ids
    feats = np.asarray(features_of_ids(uniq), dtype=np.float32)
    if feats.shape != (len(uniq), q.shape[1]):
        raise ValueError(
            f"features_of_ids returned shape {feats.shape}, expected ({len(uniq)}, {q.shape[1]})"
        )
    feats = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    for i in range(n):
        cand = np.unique(shortlist_ids[i][shortlist_ids[i] >= 0])
        if len(cand) == 0:
            continue
        s = feats[np.searchsorted(uniq, cand)] @ q[i]
        o = np.lexsort((cand, -s))[:k]
        scores[i, : len(o)] = s[o]
        ids[i, : len(o)] = cand[o]
    return scores, ids


def two_stage_search(
    index: BinaryIndex,
    codes: np.ndarray,
    query_float: np.ndarray,
    features_of_ids: Callable[[np.ndarray], np.ndarray],
    k: int,
    shortlist: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Hamming shortlist of ``shortlist`` (default ``max(10k, 100)``) ids, then :func:`rerank`."""
    shortlist = shortlist or max(10 * k, 100)
    _, cand = index.search(codes, max(shortlist, k))
    return rerank(cand, query_float, features_of_ids, k)

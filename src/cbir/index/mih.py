"""Exact Hamming k-NN and range search by multi-index hashing (MIH).

Norouzi, Punjani & Fleet, "Fast Exact Search in Hamming Space with Multi-Index
Hashing" (CVPR 2012, TPAMI 2014). Each ``bits``-bit code is cut into ``m``
disjoint contiguous substrings; one hash table per substring maps a substring
value to the codes holding it. A code at Hamming distance ``d`` from the query is
within ``d // m`` of it in at least one substring (pigeonhole), so the search
probes substring radius ``r = 0, 1, 2, ...`` table by table. After radius ``r`` in
tables ``0..t`` and radius ``r - 1`` in the others, every code not yet seen is at
distance ``>= m*r + t + 1`` (this holds for substrings of unequal lengths too);
the search stops as soon as the k-th best distance found is *strictly* below
that bound, so every code tying with the k-th one has been seen as well. A table
probed at its full length has seen every code.

Codes are packed as faiss ``IndexBinary`` packs them: ``uint8`` rows of
``bits // 8`` bytes, bit ``j`` in byte ``j // 8`` at position ``j % 8``.
Internally rows are little-endian ``uint64`` words.

Results are exactly what a brute-force scan returns, ordered by ``(distance, id)``
ascending (equal ids, which are not forbidden, by insertion). Missing results
(``k`` larger than the number of codes) are padded with distance ``INT32_MAX``
and id ``-1``.

Tables are sorted buckets: one sorted ``int64`` key array ``(table << 32) | value``
with bucket starts into an array of code positions. Search runs in numba when it
is installed (queries in parallel over numba's threads; a code met again in a
later probe is recognised from its substring distances, so no scratch memory is
shared), else in numpy (one query at a time). ``add`` appends codes to a pending
block that is scanned linearly until it is large enough to rebuild the tables;
``remove_ids`` sets tombstones, compacted by a rebuild once a quarter of the codes
are dead. A query whose probing would cost more than a linear scan is answered by
a scan instead, so the answer is exact in every case.
"""

from __future__ import annotations

import io
import itertools
import math
import os
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

from cbir.codes.bits import HAVE_NUMBA, check_codes, hamming_to, pack_words, popcount
from cbir.index.mih_kernels import HashTables
from cbir.utils import atomic_write

if HAVE_NUMBA:
    from cbir.index.mih_kernels import nb_knn, nb_range_one

__all__ = ["HAVE_NUMBA", "MultiIndexHash", "default_m", "pack_words", "popcount"]

INT32_MAX = np.iinfo(np.int32).max
_FORMAT = "cbir-mih-2"
_MAX_SUB = 32  # longest substring (bits): table keys are (table << 32) | value


@lru_cache(maxsize=256)
def _flip_masks(length: int, radius: int) -> np.ndarray:
    """All ``length``-bit values with exactly ``radius`` bits set (int64, read-only)."""
    if radius < 0 or radius > length:
        out = np.zeros(0, dtype=np.int64)
    elif radius == 0:
        out = np.zeros(1, dtype=np.int64)
    else:
        combos = np.array(list(itertools.combinations(range(length), radius)), dtype=np.int64)
        out = np.bitwise_or.reduce(np.int64(1) << combos, axis=1)
    out.setflags(write=False)
    return out


def default_m(bits: int, n: int) -> int:
    """``m ~ 1.25 bits / log2(n)`` substrings (at most 32 bits each).

    Norouzi et al. choose ``m ~ bits / log2(n)``; measured here (benchmarks/binary_speed.py,
    64-bit codes, exact 10-NN), that rule picks 3 at 1M codes where 4 was faster on three of
    the four code sets tried (CSQ, HashNet, LSH: 0.28x vs 4.5x the flat scan; DSH liked 3), and 4
    at 60k codes where 5 and 6 were faster: one more, shorter substring costs less than
    the larger probing radius the longer substrings need.
    """
    lo = max(1, -(-bits // _MAX_SUB))
    if n < 2:
        return lo
    return int(min(max(round(1.25 * bits / math.log2(n)), lo), bits))


# ---------------------------------------------------------------- the index


class MultiIndexHash:
    """Exact Hamming k-NN / range search over packed binary codes by multi-index hashing.

    Args:
        bits: code length in bits (a multiple of 8, as faiss requires).
        m: number of substrings (hash tables). ``None`` picks ``default_m(bits, n)`` at
            each (re)build from the number of codes then present.
        backend: "numba", "numpy" or "auto" (numba when installed). Same answers.
        pending_limit: appended codes are scanned linearly until there are more than
            ``max(pending_limit, n_indexed // 32)`` of them; then the tables are rebuilt.
        dead_fraction: tombstoned codes are compacted away by a rebuild once they exceed
            this fraction of the stored codes.
        scan_fraction: a query whose probing would cost more than this fraction of a
            linear scan is answered by the scan instead (same exact answer).
    """

    def __init__(
        self,
        bits: int,
        m: int | None = None,
        *,
        backend: str = "auto",
        pending_limit: int = 8192,
        dead_fraction: float = 0.25,
        scan_fraction: float = 1.0,
    ) -> None:
        if bits <= 0 or bits % 8:
            raise ValueError(f"bits must be a positive multiple of 8, got {bits}")
        lo = max(1, -(-bits // _MAX_SUB))
        if m is not None and not (lo <= m <= bits):
            raise ValueError(
                f"m must be between {lo} (substrings of at most {_MAX_SUB} bits) "
                f"and {bits} for {bits}-bit codes, got {m}"
            )
        if backend == "auto":
            backend = "numba" if HAVE_NUMBA else "numpy"
        if backend not in ("numba", "numpy"):
            raise ValueError(f"backend must be 'auto', 'numba' or 'numpy', got {backend!r}")
        if backend == "numba" and not HAVE_NUMBA:
            raise ValueError("backend 'numba' needs the numba package (pip install numba)")
        self.bits = int(bits)
        self.m_requested = m
        self.backend = backend
        self.pending_limit = int(pending_limit)
        self.dead_fraction = float(dead_fraction)
        self.scan_fraction = float(scan_fraction)
        self._nwords = max(1, -(-bits // 64))
        self._words = np.zeros((0, self._nwords), dtype=np.uint64)
        self._ids = np.zeros(0, dtype=np.int64)
        self._alive = np.zeros(0, dtype=bool)
        self._n = 0  # stored codes (alive or dead) in positions [0, _n)
        self._n_indexed = 0  # positions [0, _n_indexed) are in the tables
        self._n_dead = 0
        self._ordered = True  # ids never decrease with position (buckets are in id order)
        self._lock = threading.RLock()
        self._set_m(self.m_requested or default_m(bits, 0))

    # ------------------------------------------------------------ properties

    @property
    def ntotal(self) -> int:
        """Number of live codes."""
        return self._n - self._n_dead

    @property
    def m(self) -> int:
        """Number of substrings of the current tables."""
        return self._m

    @property
    def substring_lengths(self) -> list[int]:
        """Length in bits of each substring of the current tables."""
        return [int(x) for x in self._lengths]

    def ids(self) -> np.ndarray:
        """The ids of the live codes, in insertion order."""
        return self._ids[: self._n][self._alive[: self._n]].copy()

    def codes(self) -> np.ndarray:
        """The live codes as packed uint8 rows, in insertion order."""
        w = self._words[: self._n][self._alive[: self._n]]
        return w.astype("<u8").view(np.uint8).reshape(len(w), -1)[:, : self.bits // 8].copy()

    def nbytes(self) -> int:
        """Bytes held by the index arrays (codes, ids, tombstones and hash tables)."""
        n = self._n
        return int(
            self._words[:n].nbytes
            + self._ids[:n].nbytes
            + self._alive[:n].nbytes
            + self._tables.nbytes
        )

    # ------------------------------------------------------------ building

    def _set_m(self, m: int) -> None:
        """Cut the codes into ``m`` substrings (lengths differ by at most one bit)."""
        self._m = int(m)
        edges = np.linspace(0, self.bits, self._m + 1).round().astype(int)
        self._bounds = [(int(edges[t]), int(edges[t + 1])) for t in range(self._m)]
        self._lengths = np.array([e - s for s, e in self._bounds], dtype=np.int64)
        if int(self._lengths.max()) > _MAX_SUB or int(self._lengths.min()) < 1:
            raise ValueError(
                f"m={m} gives substrings outside 1..{_MAX_SUB} bits for {self.bits} bits"
            )
        # per-table bit masks over the words, for the substring distances of a candidate
        self._tmask = np.zeros((self._m, self._nwords), dtype=np.uint64)
        for t, (s, e) in enumerate(self._bounds):
            for j in range(s, e):
                self._tmask[t, j // 64] |= np.uint64(1) << np.uint64(j % 64)
        self._table_shift = np.arange(self._m, dtype=np.int64) << np.int64(32)
        self._tables = HashTables(self._m, self._nwords)

    def _substrings(self, words: np.ndarray) -> np.ndarray:
        """(n, W) uint64 words -> (n, m) int64 substring values."""
        out = np.empty((len(words), self._m), dtype=np.int64)
        for t, (s, e) in enumerate(self._bounds):
            w0, off = divmod(s, 64)
            mask = np.uint64((1 << (e - s)) - 1)
            v = words[:, w0] >> np.uint64(off)
            if off and (e - 1) // 64 != w0:
                v = v | (words[:, w0 + 1] << np.uint64(64 - off))
            out[:, t] = (v & mask).astype(np.int64)
        return out

    def rebuild(self) -> None:
        """Compact tombstones, index pending codes and rebuild the hash tables."""
        with self._lock:
            n = self._n
            if self._n_dead:
                alive = self._alive[:n]
                self._words = self._words[:n][alive].copy()
                self._ids = self._ids[:n][alive].copy()
                n = len(self._ids)
                self._n_dead = 0
            else:
                self._words = self._words[:n].copy()
                self._ids = self._ids[:n].copy()
            self._alive = np.ones(n, dtype=bool)
            self._n = n
            self._set_m(self.m_requested or default_m(self.bits, n))
            self._tables = HashTables.build(
                self._words, self._substrings(self._words), self._lengths
            )
            self._n_indexed = n
            self._ordered = bool(np.all(self._ids[1:n] >= self._ids[: n - 1])) if n > 1 else True

    def add(self, codes: np.ndarray, ids: np.ndarray | None = None) -> None:
        """Append packed codes with int64 ids (default: consecutive after the largest id)."""
        codes = check_codes(codes, self.bits)
        with self._lock:
            n_new = len(codes)
            if ids is None:
                start = int(self._ids[: self._n].max()) + 1 if self._n else 0
                ids = np.arange(start, start + n_new, dtype=np.int64)
            ids = np.asarray(ids, dtype=np.int64).reshape(-1)
            if len(ids) != n_new:
                raise ValueError(f"got {n_new} codes but {len(ids)} ids")
            if n_new == 0:
                return
            need = self._n + n_new
            if need > len(self._ids):
                cap = max(need, 2 * len(self._ids), 1024)
                words = np.zeros((cap, self._nwords), dtype=np.uint64)
                words[: self._n] = self._words[: self._n]
                new_ids = np.full(cap, -1, dtype=np.int64)
                new_ids[: self._n] = self._ids[: self._n]
                alive = np.zeros(cap, dtype=bool)
                alive[: self._n] = self._alive[: self._n]
                self._words, self._ids, self._alive = words, new_ids, alive
            self._words[self._n : need] = pack_words(codes)
            last = self._ids[self._n - 1] if self._n else ids[0]
            self._ordered = self._ordered and bool(ids[0] >= last and np.all(ids[1:] >= ids[:-1]))
            self._ids[self._n : need] = ids
            self._alive[self._n : need] = True
            self._n = need
            if need - self._n_indexed > max(self.pending_limit, self._n_indexed // 32):
                self.rebuild()

    def remove_ids(self, ids: np.ndarray) -> int:
        """Tombstone every live code whose id is in ``ids``; returns how many were removed."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        with self._lock:
            n = self._n
            hit = np.isin(self._ids[:n], ids) & self._alive[:n]
            count = int(hit.sum())
            if count:
                self._alive[:n][hit] = False
                self._n_dead += count
                if self._n_dead > self.dead_fraction * max(n, 1):
                    self.rebuild()
            return count

    def reset(self) -> None:
        """Remove every code."""
        with self._lock:
            self.__init__(
                self.bits,
                self.m_requested,
                backend=self.backend,
                pending_limit=self.pending_limit,
                dead_fraction=self.dead_fraction,
                scan_fraction=self.scan_fraction,
            )

    # ------------------------------------------------------------ search

    def _prepare(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._n_indexed == 0 and self._n > 0:
            self.rebuild()
        qwords = pack_words(check_codes(queries, self.bits, "queries"))
        return qwords, self._substrings(qwords)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact k-NN: ``(D int32 (nq, k), I int64 (nq, k))`` sorted by (distance, id)."""
        k = int(k)
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        with self._lock:
            qwords, qsubs = self._prepare(queries)
            nq = len(qwords)
            D = np.full((nq, k), INT32_MAX, dtype=np.int32)
            I = np.full((nq, k), -1, dtype=np.int64)
            if k == 0 or self.ntotal == 0 or nq == 0:
                return D, I
            if self.backend == "numba":
                n, ni = self._n, self._n_indexed
                D64 = np.full((nq, k), INT32_MAX, dtype=np.int64)
                budget = int(min(self.scan_fraction * (n + 64), 2.0**62))
                nb_knn(
                    qwords,
                    qsubs,
                    k,
                    n,
                    ni,
                    self._words,
                    self._alive,
                    self._ids,
                    self._tables.arrays(),
                    self._tmask,
                    self._lengths,
                    budget,
                    D64,
                    I,
                    self._ordered,
                )
                return D64.astype(np.int32), I
            ids = self._ids
            for i in range(nq):
                P, d = self._knn_one(qwords[i], qsubs[i], k)
                e = ids[P]
                o = np.lexsort((P, e, d))
                D[i, : len(o)] = d[o]
                I[i, : len(o)] = e[o]
            return D, I

    def range_search(
        self, queries: np.ndarray, radius: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All codes within Hamming distance ``radius`` (inclusive) of each query.

        Returns faiss-style ``(lims int64 (nq+1,), D int32, I int64)``: query ``i``'s
        results are ``D[lims[i]:lims[i+1]]``, ``I[...]``, sorted by (distance, id).
        Probes substring radius ``radius // m`` in every table (pigeonhole).
        """
        radius = int(radius)
        with self._lock:
            qwords, qsubs = self._prepare(queries)
            nq = len(qwords)
            lims = np.zeros(nq + 1, dtype=np.int64)
            if radius < 0 or self.ntotal == 0 or nq == 0:
                return lims, np.zeros(0, np.int32), np.zeros(0, np.int64)
            Ds: list[np.ndarray] = []
            Is: list[np.ndarray] = []
            ids = self._ids
            for i in range(nq):
                P, d = self._range_one(qwords[i], qsubs[i], radius)
                e = ids[P]
                o = np.lexsort((P, e, d))
                Ds.append(d[o].astype(np.int32))
                Is.append(e[o])
                lims[i + 1] = lims[i] + len(o)
            return lims, np.concatenate(Ds), np.concatenate(Is)

    def _scan_all(self, qw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions of all live codes and their distances to ``qw``."""
        n = self._n
        d = hamming_to(self._words[:n], qw)
        if self._n_dead:
            pos = np.flatnonzero(self._alive[:n])
            return pos, d[pos]
        return np.arange(n), d

    def _range_one(
        self, qw: np.ndarray, qs: np.ndarray, radius: int
    ) -> tuple[np.ndarray, np.ndarray]:
        ni = self._n_indexed
        rs = radius // self._m
        scan = ni == 0 or rs >= int(self._lengths.min())
        if not scan:
            nprobe = sum(math.comb(int(L), r) for L in self._lengths for r in range(rs + 1))
            scan = 64 * nprobe > self.scan_fraction * (self._n + 64)
        if scan:
            P, d = self._scan_all(qw)
        elif self.backend == "numba":
            P, d = nb_range_one(
                qw,
                qs,
                radius,
                self._n,
                ni,
                self._words,
                self._alive,
                self._tables.arrays(),
                self._tmask,
                self._lengths,
            )
        else:
            keys = np.concatenate(
                [
                    _flip_masks(int(self._lengths[t]), r) ^ (qs[t] | self._table_shift[t])
                    for r in range(rs + 1)
                    for t in range(self._m)
                ]
            )
            P = np.unique(self._tables.tids[self._entries(keys)]).astype(np.int64)
            if self._n > ni:
                P = np.concatenate([P, np.arange(ni, self._n)])
            if self._n_dead:
                P = P[self._alive[P]]
            d = hamming_to(self._words[P], qw)
        keep = d <= radius
        return P[keep], d[keep]

    # numpy backend: one query at a time, vectorised over the probes of one table

    def _entries(self, keys: np.ndarray) -> np.ndarray:
        """Bucket entries (indices into tids/tcodes) of the buckets with these keys."""
        tk, bstart = self._tables.keys, self._tables.bstart
        if len(tk) == 0 or len(keys) == 0:
            return np.zeros(0, dtype=np.int64)
        i = np.searchsorted(tk, keys)
        np.minimum(i, len(tk) - 1, out=i)
        i = i[tk[i] == keys]
        if len(i) == 0:
            return np.zeros(0, dtype=np.int64)
        starts = bstart[i]
        lens = bstart[i + 1] - starts
        ends = np.cumsum(lens)
        return np.repeat(starts - ends + lens, lens) + np.arange(int(ends[-1]))

    def _knn_one(self, qw: np.ndarray, qs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions and distances of the k best codes of one query (numpy backend)."""
        n, ni, m = self._n, self._n_indexed, self._m
        alive, tb = self._alive, self._tables
        P = np.arange(ni, n)
        d = hamming_to(self._words[ni:n], qw)
        if self._n_dead:
            keep = alive[P]
            P, d = P[keep], d[keep]
        bp, bd = self._select(P, d, k)
        if ni == 0:
            return bp, bd
        order = np.arange(m)
        budget = self.scan_fraction * (n + 64)
        cost = seen = 0
        for r in range(int(self._lengths.min()) + 1):
            for t in range(m):
                if cost + 64 * math.comb(int(self._lengths[t]), r) > budget:
                    return self._select(*self._scan_all(qw), k)
                keys = _flip_masks(int(self._lengths[t]), r) ^ (qs[t] | self._table_shift[t])
                j = self._entries(keys)
                cost += 64 * len(keys) + 2 * len(j)
                if len(j):
                    x = tb.tcodes[j] ^ qw  # (len(j), W)
                    h = popcount(x[:, None, :] & self._tmask[None, :, :]).sum(
                        axis=2, dtype=np.int64
                    )
                    # new here unless an earlier probe (smaller (radius, table)) met it
                    new = ~((h < r) | ((h == r) & (order < t))).any(axis=1)
                    seen += int(new.sum())
                    P, d = tb.tids[j[new]].astype(np.int64), h[new].sum(axis=1)
                    keep = alive[P]
                    if len(bd) >= k:
                        keep &= d <= bd.max()
                    P, d = P[keep], d[keep]
                    if len(P):
                        bp, bd = self._select(np.concatenate([bp, P]), np.concatenate([bd, d]), k)
                if len(bd) >= k and int(bd.max()) < m * r + t + 1:
                    return bp, bd
                if seen == ni:
                    return bp, bd  # every indexed code met
        return bp, bd  # a table was probed at its full length: every code was met

    def _select(self, P: np.ndarray, d: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k best candidates by (distance, id, position), unsorted."""
        if len(P) <= k:
            return P, d
        T = int(np.partition(d, k - 1)[k - 1])
        below = d < T
        nb = int(below.sum())
        tie = np.flatnonzero(d == T)
        if nb + len(tie) == k:
            keep = below | (d == T)
            return P[keep], d[keep]
        tp = P[tie]
        o = np.lexsort((tp, self._ids[tp]))[: k - nb]
        return np.concatenate([P[below], tp[o]]), np.concatenate([d[below], d[tie[o]]])

    # ------------------------------------------------------------ persistence

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write codes, ids and settings atomically (temp file, fsync, rename) as ``.npz``.

        The hash tables are derived data: :meth:`load` rebuilds them.
        """
        with self._lock:
            live = self._alive[: self._n]
            arrays = {
                "format": np.array(_FORMAT),
                "bits": np.array(self.bits),
                "m_requested": np.array(-1 if self.m_requested is None else self.m_requested),
                "pending_limit": np.array(self.pending_limit),
                "dead_fraction": np.array(self.dead_fraction),
                "scan_fraction": np.array(self.scan_fraction),
                "words": self._words[: self._n][live],
                "ids": self._ids[: self._n][live],
            }

            def write(f):
                buf = io.BytesIO()
                np.savez(buf, **arrays)
                f.write(buf.getbuffer())

            return atomic_write(path, write)

    @classmethod
    def load(cls, path: str | os.PathLike[str], backend: str = "auto") -> MultiIndexHash:
        """Read an index written by :meth:`save` (and rebuild its tables)."""
        with np.load(os.fspath(path), allow_pickle=False) as z:
            if "format" not in z or str(z["format"]) != _FORMAT:
                raise ValueError(f"{path}: not a cbir MIH index ({_FORMAT})")
            mreq = int(z["m_requested"])
            index = cls(
                int(z["bits"]),
                None if mreq < 0 else mreq,
                backend=backend,
                pending_limit=int(z["pending_limit"]),
                dead_fraction=float(z["dead_fraction"]),
                scan_fraction=float(z["scan_fraction"]),
            )
            words = np.ascontiguousarray(z["words"], dtype=np.uint64)
            ids = np.ascontiguousarray(z["ids"], dtype=np.int64)
        n = len(ids)
        if words.shape != (n, index._nwords):
            raise ValueError(
                f"{path}: codes array has shape {words.shape}, expected ({n}, {index._nwords})"
            )
        index._words, index._ids, index._n = words, ids, n
        index._alive = np.ones(n, dtype=bool)
        index.rebuild()
        return index

"""The hash tables of multi-index hashing (:mod:`cbir.index.mih`) and its numba kernels
(heap, scan, probe).

Norouzi, Punjani & Fleet, "Fast Exact Search in Hamming Space with Multi-Index Hashing"
(CVPR 2012). The kernels are defined only where numba is installed (``HAVE_NUMBA``); the numpy
path of :class:`cbir.index.mih.MultiIndexHash` gives the same answers.
"""

from __future__ import annotations

import numpy as np

from cbir.codes.bits import HAVE_NUMBA

_DIR_BITS = 16  # a direct-address directory on the top bits of each substring value


class HashTables:
    """The m hash tables, as sorted buckets.

    ``keys`` (int64, sorted): ``(table << 32) | value`` of every non-empty bucket;
    bucket ``b`` holds entries ``bstart[b]:bstart[b+1]`` of ``tids`` (code positions,
    int32) and ``tcodes`` (the codes themselves, copied in bucket order so that a bucket
    is read sequentially). ``dirs[doff[t] + (value >> dshift[t])]`` is the first key of
    table ``t`` with those top bits, so a lookup binary-searches only a few keys.
    """

    def __init__(self, m: int, nwords: int) -> None:
        self.keys = np.zeros(0, np.int64)
        self.bstart = np.zeros(1, np.int64)
        self.tids = np.zeros(0, np.int32)
        self.tcodes = np.zeros((0, nwords), np.uint64)
        self.dirs = np.zeros(2 * m, np.int64)
        self.doff = np.arange(0, 2 * m + 1, 2, dtype=np.int64)
        self.dshift = np.zeros(m, np.int64)

    @classmethod
    def build(cls, words: np.ndarray, subs: np.ndarray, lengths: np.ndarray) -> HashTables:
        """Tables over codes ``words`` (n, W) whose substring values are ``subs`` (n, m)."""
        n, m = subs.shape
        if n >= 2**31:
            raise ValueError(f"{n} codes: the tables hold at most 2**31 - 1")
        self = cls(m, words.shape[1])
        keys, starts, tids, dirs, dlen = [], [], [], [], [0]
        shifts = []
        nkeys = 0
        for t in range(m):
            v = subs[:, t]
            order = np.argsort(v, kind="stable")
            sv = v[order]
            first = np.flatnonzero(np.r_[True, sv[1:] != sv[:-1]]) if n else np.zeros(0, np.intp)
            uv = sv[first]
            keys.append(uv | np.int64(t << 32))
            starts.append(first.astype(np.int64) + t * n)
            tids.append(order.astype(np.int32))
            bits = min(int(lengths[t]), _DIR_BITS)
            shift = int(lengths[t]) - bits
            shifts.append(shift)
            dirs.append(np.searchsorted(uv >> shift, np.arange((1 << bits) + 1)) + nkeys)
            dlen.append(dlen[-1] + len(dirs[-1]))
            nkeys += len(uv)
        self.keys = np.concatenate(keys).astype(np.int64, copy=False)
        self.bstart = np.concatenate([*starts, np.array([m * n], dtype=np.int64)])
        self.tids = np.concatenate(tids)
        self.tcodes = words[self.tids.astype(np.intp) if n else np.zeros(0, np.intp)]
        self.tcodes = np.ascontiguousarray(self.tcodes.reshape(m * n, words.shape[1]))
        self.dirs = np.concatenate(dirs).astype(np.int64)
        self.doff = np.array(dlen, dtype=np.int64)
        self.dshift = np.array(shifts, dtype=np.int64)
        return self

    def arrays(self) -> tuple[np.ndarray, ...]:
        """(keys, bstart, tids, tcodes, dirs, doff, dshift): the kernels' ``tables`` argument."""
        return (self.keys, self.bstart, self.tids, self.tcodes, self.dirs, self.doff, self.dshift)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays())


if HAVE_NUMBA:
    import numba

    from cbir.codes.bits import popc as _popc

    _jit = numba.njit(cache=True, nogil=True)

    @_jit
    def _nb_less(d1, i1, p1, d2, i2, p2):  # (distance, id, position) order
        if d1 != d2:
            return d1 < d2
        if i1 != i2:
            return i1 < i2
        return p1 < p2

    @_jit
    def _nb_sift_down(hd, hi, hp, start, size):
        j = start
        while True:
            c = 2 * j + 1
            if c >= size:
                return
            if c + 1 < size and _nb_less(hd[c], hi[c], hp[c], hd[c + 1], hi[c + 1], hp[c + 1]):
                c += 1
            if _nb_less(hd[j], hi[j], hp[j], hd[c], hi[c], hp[c]):
                hd[j], hd[c] = hd[c], hd[j]
                hi[j], hi[c] = hi[c], hi[j]
                hp[j], hp[c] = hp[c], hp[j]
                j = c
            else:
                return

    @_jit
    def _nb_push(hd, hi, hp, size, k, d, i, p):
        """Offer (d, i, p) to a max-heap of the k best; returns the new size."""
        if size < k:
            j = size
            hd[j], hi[j], hp[j] = d, i, p
            while j > 0:
                par = (j - 1) // 2
                if _nb_less(hd[par], hi[par], hp[par], hd[j], hi[j], hp[j]):
                    hd[j], hd[par] = hd[par], hd[j]
                    hi[j], hi[par] = hi[par], hi[j]
                    hp[j], hp[par] = hp[par], hp[j]
                    j = par
                else:
                    break
            return size + 1
        if _nb_less(d, i, p, hd[0], hi[0], hp[0]):
            hd[0], hi[0], hp[0] = d, i, p
            _nb_sift_down(hd, hi, hp, 0, size)
        return size

    @_jit
    def _nb_heap_sort(hd, hi, hp, size):
        for end in range(size - 1, 0, -1):
            hd[0], hd[end] = hd[end], hd[0]
            hi[0], hi[end] = hi[end], hi[0]
            hp[0], hp[end] = hp[end], hp[0]
            _nb_sift_down(hd, hi, hp, 0, end)

    @_jit
    def _nb_dist(codes, j, qw):
        """Hamming distance between row ``j`` of ``codes`` and the query words ``qw``."""
        d = 0
        for w in range(qw.shape[0]):
            d += np.int64(_popc(codes[j, w] ^ qw[w]))
        return d

    @_jit
    def _nb_next_mask(x):
        """The next larger value with as many bits set as ``x`` (Gosper's hack)."""
        c = x & -x
        y = x + c
        return (((y ^ x) >> 2) // c) | y

    @_jit
    def _nb_append(out, cnt, p, d):
        """Store the pair (p, d) at slot ``cnt`` of ``out``, grown when full; returns ``out``."""
        if 2 * cnt + 2 > out.shape[0]:
            grown = np.empty(2 * out.shape[0], np.int64)
            grown[: 2 * cnt] = out[: 2 * cnt]
            out = grown
        out[2 * cnt] = p
        out[2 * cnt + 1] = d
        return out

    @_jit
    def _nb_scan(lo, hi_, qw, k, size, words, alive, ids, hd, hi, hp):
        for p in range(lo, hi_):
            if alive[p]:
                size = _nb_push(hd, hi, hp, size, k, _nb_dist(words, p, qw), ids[p], p)
        return size

    @_jit
    def _nb_bucket(t, v, keys, dirs, doff, dshift):
        """Index of the bucket of value ``v`` in table ``t``, or -1 when it is empty."""
        i = doff[t] + (v >> dshift[t])
        lo = dirs[i]
        end = dirs[i + 1]
        hi_ = end
        key = (np.int64(t) << 32) | v
        while lo < hi_:
            mid = (lo + hi_) >> 1
            if keys[mid] < key:
                lo = mid + 1
            else:
                hi_ = mid
        if lo < end and keys[lo] == key:
            return lo
        return -1

    @_jit
    def _nb_new_dist(tcodes, j, qw, tmask, r, t):
        """Distance of bucket entry ``j`` (met at radius r in table t), or -1 if an earlier
        probe (smaller radius, or same radius and smaller table) met it already."""
        for u in range(tmask.shape[0]):
            if u == t:
                continue
            h = 0
            for w in range(qw.shape[0]):
                h += np.int64(_popc((tcodes[j, w] ^ qw[w]) & tmask[u, w]))
            if h < r or (h == r and u < t):
                return -1
        return _nb_dist(tcodes, j, qw)

    @_jit
    def _nb_knn_one(
        qw,
        qs,
        k,
        n,
        ni,
        words,
        alive,
        ids,
        tables,
        tmask,
        lengths,
        budget,
        hd,
        hi,
        hp,
        ordered,
    ):
        """The k best (distance, id, position) of one query in hd/hi/hp; returns how many.

        ``ordered``: ids never decrease with position, so (id, position) order is position
        order, which is a bucket's order: once the heap is full with a k-th distance at most
        the probe radius r, no later entry of the bucket (distance >= r, larger position)
        can enter it, and the rest of the bucket is skipped.
        """
        keys, bstart, tids, tcodes, dirs, doff, dshift = tables
        size = _nb_scan(ni, n, qw, k, 0, words, alive, ids, hd, hi, hp)  # pending codes
        if ni == 0:
            return size
        m = lengths.shape[0]
        minlen = lengths.min()
        cost = 0
        seen = 0
        r = 0
        while r <= minlen:
            for t in range(m):
                x = (np.int64(1) << r) - 1
                top = np.int64(1) << lengths[t]
                while x < top:
                    b = _nb_bucket(t, qs[t] ^ x, keys, dirs, doff, dshift)
                    cost += 64
                    if b >= 0:
                        j0 = bstart[b]
                        j1 = bstart[b + 1]
                        cost += 2 * (j1 - j0)
                        for j in range(j0, j1):
                            if (
                                ordered
                                and size == k
                                and (hd[0] < r or (hd[0] == r and tids[j] > hp[0]))
                            ):
                                cost -= 2 * (j1 - j)  # the rest of the bucket is not read
                                break
                            d = _nb_dist(tcodes, j, qw)
                            if size == k and d > hd[0]:
                                continue
                            if m > 1 and _nb_new_dist(tcodes, j, qw, tmask, r, t) < 0:
                                continue
                            seen += 1  # exact while the heap is not full
                            p = np.int64(tids[j])
                            if alive[p]:
                                size = _nb_push(hd, hi, hp, size, k, d, ids[p], p)
                    if x == 0:
                        break
                    x = _nb_next_mask(x)
                if size == k and hd[0] < m * r + t + 1:
                    return size  # every code not yet met is farther than the k-th
                if size < k and seen == ni:
                    return size  # fewer than k codes: all of them met
                if cost > budget:  # probing costs more than a scan: scan instead
                    return _nb_scan(0, n, qw, k, 0, words, alive, ids, hd, hi, hp)
            r += 1
        return size  # a table was probed at its full length: every code was met

    @numba.njit(cache=True, nogil=True, parallel=True)
    def nb_knn(
        qwords,
        qsubs,
        k,
        n,
        ni,
        words,
        alive,
        ids,
        tables,
        tmask,
        lengths,
        budget,
        D,
        I,
        ordered,
    ):
        for i in numba.prange(qwords.shape[0]):
            hd = np.empty(k, np.int64)
            hi = np.empty(k, np.int64)
            hp = np.empty(k, np.int64)
            size = _nb_knn_one(
                qwords[i],
                qsubs[i],
                k,
                n,
                ni,
                words,
                alive,
                ids,
                tables,
                tmask,
                lengths,
                budget,
                hd,
                hi,
                hp,
                ordered,
            )
            _nb_heap_sort(hd, hi, hp, size)
            for j in range(size):
                D[i, j] = hd[j]
                I[i, j] = hi[j]

    @_jit
    def nb_range_one(
        qw,
        qs,
        radius,
        n,
        ni,
        words,
        alive,
        tables,
        tmask,
        lengths,
    ):
        """Positions and distances of the codes within ``radius`` (unordered)."""
        keys, bstart, tids, tcodes, dirs, doff, dshift = tables
        m = lengths.shape[0]
        out = np.empty(64, np.int64)  # pairs (position, distance)
        cnt = 0
        for p in range(ni, n):  # pending codes
            if alive[p]:
                d = _nb_dist(words, p, qw)
                if d <= radius:
                    out = _nb_append(out, cnt, p, d)
                    cnt += 1
        for r in range(radius // m + 1):
            for t in range(m):
                x = (np.int64(1) << r) - 1
                top = np.int64(1) << lengths[t]
                while x < top:
                    b = _nb_bucket(t, qs[t] ^ x, keys, dirs, doff, dshift)
                    if b >= 0:
                        for j in range(bstart[b], bstart[b + 1]):
                            d = _nb_new_dist(tcodes, j, qw, tmask, r, t)
                            p = np.int64(tids[j])
                            if d < 0 or d > radius or not alive[p]:
                                continue
                            out = _nb_append(out, cnt, p, d)
                            cnt += 1
                    if x == 0:
                        break
                    x = _nb_next_mask(x)
        return out[0 : 2 * cnt : 2].copy(), out[1 : 2 * cnt : 2].copy()

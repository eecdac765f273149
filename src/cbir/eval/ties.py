"""Tie-aware expectations for ranking metrics: the tie group a cut-off falls in.

Exact expected values over random orders within groups of tied items (McSherry &
Najork, "Computing Information Retrieval Performance Measures Efficiently in the
Presence of Tied Scores", ECIR 2008), used by :mod:`cbir.eval.metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class Tables:
    """Harmonic numbers ``H[i] = 1 + 1/2 + ... + 1/i`` and ``log i!`` for i = 0..n,
    summed in extended precision so that differences of far-apart entries stay exact."""

    def __init__(self, n: int) -> None:
        i = np.arange(1, n + 1, dtype=np.longdouble)
        self.H = np.concatenate([[0.0], np.cumsum(1 / i).astype(np.float64)])
        self.LF = np.concatenate([[0.0], np.cumsum(np.log(i)).astype(np.float64)])

    def log_choose(self, n: np.ndarray, k: np.ndarray) -> np.ndarray:
        """``log C(n, k)`` for integer-valued ``0 <= k <= n``."""
        n, k = n.astype(np.int64), k.astype(np.int64)
        return self.LF[n] - self.LF[k] - self.LF[n - k]


@dataclass
class Cut:
    """The tie group that a cut-off at rank ``k`` falls in, one entry per query.

    ``S`` items (``Rb`` relevant) rank before the group, which holds ``n`` items, ``r``
    of them relevant, and ``A`` is the expected ``sum P@i rel_i`` over the ``S`` items
    before it; the top ``k`` takes ``m = k - S`` (1..n) items of the group.
    """

    k: np.ndarray
    S: np.ndarray
    n: np.ndarray
    r: np.ndarray
    Rb: np.ndarray
    A: np.ndarray
    tab: Tables

    def __post_init__(self) -> None:
        self.m = self.k - self.S
        self.frac = self.r / self.n
        H = self.tab.H
        self.s1 = H[(self.S + self.m).astype(np.int64)] - H[self.S.astype(np.int64)]

    def rel(self) -> np.ndarray:
        """E[#relevant in the top k]."""
        return self.Rb + self.m * self.frac

    def sum_prec(self) -> np.ndarray:
        """E[sum_{i<=k} P@i rel_i]: the group's i-th position (1-based) is relevant with
        probability r/n, and then holds ``Rb + 1 + (i-1)(r-1)/(n-1)`` relevant items."""
        c = np.where(self.n > 1, (self.r - 1) / np.maximum(self.n - 1, 1), 0.0)
        inner = (self.Rb + 1) * self.s1 + c * (self.m - (self.S + 1) * self.s1)
        return self.A + self.frac * inner

    def p_none(self) -> np.ndarray:
        """P(no relevant item in the top k) = [Rb = 0] C(n - r, m) / C(n, m)."""
        free = self.n - self.r
        ok = (self.Rb == 0) & (self.m <= free)
        m = np.where(ok, self.m, 0)
        logp = self.tab.log_choose(free, m) - self.tab.log_choose(self.n, m)
        return np.where(ok, np.exp(logp), 0.0)

    def ap(self) -> np.ndarray:
        """E[AP@k], AP@k = sum_{i<=k} P@i rel_i / #relevant in the top k (0 if none).

        The group's share x of the top k is hypergeometric; given x, its m positions hold
        x relevant items uniformly, so the sum is ``A + x/m [(Rb+1) s1 + (x-1)/(m-1) s2]``
        with ``s1 = sum_i 1/(S+i)``, ``s2 = sum_i (i-1)/(S+i)``, over i = 1..m.
        """
        m, n, r, Rb = self.m, self.n, self.r, self.Rb
        fixed = (m >= n) | (r == 0) | (r == n)  # x = m r / n for sure
        den = Rb + m * self.frac
        out = np.where(fixed & (den > 0), self.sum_prec() / np.where(den > 0, den, 1.0), 0.0)
        rand = np.flatnonzero(~fixed)
        if len(rand) == 0:
            return out
        m, n, r, Rb = m[rand], n[rand], r[rand], Rb[rand]
        A, S, s1 = self.A[rand], self.S[rand], self.s1[rand]
        lo = np.maximum(0, m - (n - r))
        hi = np.minimum(r, m)
        cnt = (hi - lo + 1).astype(np.int64)
        which = np.repeat(np.arange(len(rand)), cnt)
        start = np.cumsum(cnt) - cnt
        x = lo[which] + (np.arange(cnt.sum()) - start[which])
        mw, nw, rw, Rbw = m[which], n[which], r[which], Rb[which]
        lc = self.tab.log_choose
        logp = lc(rw, x) + lc(nw - rw, mw - x) - lc(nw, mw)
        p = np.exp(logp)
        s2 = mw - (S[which] + 1) * s1[which]
        c = np.where(mw > 1, (x - 1) / np.maximum(mw - 1, 1), 0.0)
        num = A[which] + x / mw * ((Rbw + 1) * s1[which] + c * s2)
        dx = Rbw + x
        val = np.where(dx > 0, num / np.where(dx > 0, dx, 1.0), 0.0)
        norm = np.bincount(which, weights=p, minlength=len(rand))
        out[rand] = np.bincount(which, weights=p * val, minlength=len(rand)) / norm
        return out

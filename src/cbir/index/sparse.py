"""An inverted index over sparse codes: posting lists of the active dimensions (scipy.sparse).

A high-dimensional sparse code (the k-sparse or L1 autoencoder codes of
:mod:`cbir.heads.sparse`) is searched by *scored overlap*: an item's score is the sparse
dot product with the query, accumulated over the posting lists of the query's active
dimensions only, the inverted file of text retrieval that Video Google brought to images
(Sivic & Zisserman, ICCV 2003). The posting list of dimension ``d`` is row ``d`` of a
``(dim, n)`` CSR matrix (the database codes in CSC layout: item rows and their values);
``queries @ postings`` is scipy's compiled sparse product, which walks exactly those lists.

Search is exact: the top ``k`` by (score descending, id ascending), also among items that
share no active dimension with the query (score 0, so a short candidate list is filled
by id, as a brute-force scan would order them). Deletes are tombstones: the rows stay
until more than a quarter of them are dead, then the index is compacted (rebuilt from
the live rows). :meth:`SparseIndex.save` writes one ``.npz`` file atomically.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from cbir.errors import CbirError
from cbir.utils import atomic_write_bytes

__all__ = ["SparseIndex", "as_csr", "load_sparse_index", "make_sparse_index"]

FORMAT = "cbir-sparse-index-1"
#: Compact when more than this share of the stored rows is tombstoned.
COMPACT_DEAD = 0.25
#: Queries scored per sparse product (bounds the candidate matrix).
QUERY_CHUNK = 256


def as_csr(x: object, dim: int | None = None) -> sp.csr_matrix:
    """``x`` (a scipy sparse matrix or dense rows) as canonical float32 CSR."""
    if sp.issparse(x):
        m = sp.csr_matrix(x, dtype=np.float32)
    else:
        a = np.asarray(x, dtype=np.float32)
        if a.ndim == 1:
            a = a[None]
        m = sp.csr_matrix(a)
    if dim is not None and m.shape[1] != dim:
        raise ValueError(f"codes have {m.shape[1]} dimensions, the index {dim}")
    m.sum_duplicates()  # canonical: sorted column indices, no duplicates
    m.eliminate_zeros()
    return m


def _top(vals: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Positions of the top ``k`` of ``vals`` by (value descending, id ascending)."""
    if len(vals) > k:
        kth = np.partition(vals, len(vals) - k)[len(vals) - k]  # the k-th largest value
        sel = np.flatnonzero(vals >= kth)  # everything tied with it stays a candidate
    else:
        sel = np.arange(len(vals))
    order = np.lexsort((ids[sel], -vals[sel]))[:k]
    return sel[order]


class SparseIndex:
    """Inverted index of sparse codes keyed by int64 ids (see the module doc).

    Args:
        dim: code dimension (number of posting lists).
    """

    spec = "Inverted"

    def __init__(self, dim: int) -> None:
        self.dim = int(dim)
        self._rows = sp.csr_matrix((0, self.dim), dtype=np.float32)
        self._pending: list[sp.csr_matrix] = []
        self._ids = np.zeros(0, np.int64)
        self._live = np.zeros(0, bool)
        self._post: sp.csr_matrix | None = None
        self._by_id: np.ndarray | None = None

    # ------------------------------------------------------------------ state
    @property
    def ntotal(self) -> int:
        """Number of live codes."""
        return int(self._live.sum())

    @property
    def is_trained(self) -> bool:
        return True

    def ids(self) -> np.ndarray:
        """The live ids, in storage order."""
        return self._ids[self._live].copy()

    def rows(self) -> sp.csr_matrix:
        """All stored rows (live and tombstoned), in storage order."""
        if self._pending:
            self._rows = sp.vstack([self._rows, *self._pending], format="csr", dtype=np.float32)
            self._pending = []
        return self._rows

    def _live_by_id(self) -> np.ndarray:
        """Storage rows of the live codes, in id order."""
        if self._by_id is None:
            live = np.flatnonzero(self._live)
            self._by_id = live[np.argsort(self._ids[live], kind="stable")]
        return self._by_id

    def codes(self, ids: np.ndarray) -> sp.csr_matrix:
        """The stored codes of live ``ids`` (in that order); KeyError for an unknown id."""
        ids = np.asarray(ids, np.int64).ravel()
        order = self._live_by_id()
        sid = self._ids[order]
        pos = np.minimum(np.searchsorted(sid, ids), max(len(sid) - 1, 0))
        ok = sid[pos] == ids if len(sid) else np.zeros(len(ids), bool)
        if not ok.all():
            raise KeyError(f"ids not in the index: {ids[~ok][:5].tolist()}")
        return self.rows()[order[pos]]

    def nbytes(self) -> int:
        r = self.rows()
        return int(
            r.data.nbytes
            + r.indices.nbytes
            + r.indptr.nbytes
            + self._ids.nbytes
            + self._live.nbytes
        )

    def stats(self) -> dict[str, float]:
        """Active dimensions per live code and posting-list lengths."""
        r = self.rows()[self._live]
        per_row = np.diff(r.indptr)
        lists = np.bincount(r.indices, minlength=self.dim)
        return {
            "codes": int(r.shape[0]),
            "active_mean": float(per_row.mean()) if len(per_row) else 0.0,
            "active_max": int(per_row.max()) if len(per_row) else 0,
            "posting_mean": float(lists.mean()),
            "posting_max": int(lists.max()) if len(lists) else 0,
            "dims_used": int((lists > 0).sum()),
        }

    # ---------------------------------------------------------------- writing
    def add_with_ids(self, codes: object, ids: np.ndarray) -> None:
        """Add codes (sparse or dense rows) under ``ids``; an id already live is refused."""
        ids = np.asarray(ids, np.int64).ravel()
        m = as_csr(codes, self.dim)
        if m.shape[0] != len(ids):
            raise ValueError(f"{m.shape[0]} codes for {len(ids)} ids")
        if len(np.unique(ids)) != len(ids) or np.isin(ids, self._ids[self._live]).any():
            raise ValueError("an id is added twice; remove it first")
        if not len(ids):
            return
        self._pending.append(m)
        self._ids = np.concatenate([self._ids, ids])
        self._live = np.concatenate([self._live, np.ones(len(ids), bool)])
        self._post = None
        self._by_id = None

    def remove_ids(self, ids: np.ndarray) -> int:
        """Tombstone ``ids``; returns how many were live. Compacts when many rows are dead."""
        ids = np.asarray(ids, np.int64).ravel()
        hit = self._live & np.isin(self._ids, ids)
        n = int(hit.sum())
        if n:
            self._live &= ~hit
            self._by_id = None
            if (~self._live).sum() > COMPACT_DEAD * len(self._live):
                self.compact()
        return n

    def compact(self) -> None:
        """Rebuild from the live rows only (drops tombstones)."""
        keep = np.flatnonzero(self._live)
        self._rows = self.rows()[keep]
        self._ids = self._ids[keep]
        self._live = np.ones(len(keep), bool)
        self._post = None
        self._by_id = None

    # ---------------------------------------------------------------- search
    def postings(self) -> sp.csr_matrix:
        """The posting lists: a ``(dim, stored rows)`` CSR matrix."""
        if self._post is None:
            self._post = self.rows().T.tocsr()
            self._post.sort_indices()
        return self._post

    def scores(self, queries: object) -> sp.csr_matrix:
        """Scores ``(nq, stored rows)`` of every stored row sharing an active dimension."""
        return (as_csr(queries, self.dim) @ self.postings()).tocsr()

    def search(self, queries: object, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` by (sparse dot product desc, id asc): ``(scores float32, ids int64)``,
        both ``(nq, k)``, padded with ``-inf`` / ``-1`` when fewer than ``k`` codes are live."""
        if k < 1:
            raise ValueError("k must be at least 1")
        q = as_csr(queries, self.dim)
        nq = q.shape[0]
        D = np.full((nq, k), -np.inf, np.float32)
        I = np.full((nq, k), -1, np.int64)
        if self.ntotal == 0 or nq == 0:
            return D, I
        post = self.postings()
        self._live_by_id()  # the order of the zero-score tail
        kk = min(k, self.ntotal)
        for a in range(0, nq, QUERY_CHUNK):
            s = (q[a : a + QUERY_CHUNK] @ post).tocsr()
            for r in range(s.shape[0]):
                lo, hi = s.indptr[r], s.indptr[r + 1]
                rows, vals = s.indices[lo:hi], s.data[lo:hi]
                live = self._live[rows]
                rows, vals = rows[live], vals[live]
                D[a + r, :kk], I[a + r, :kk] = self._rank(rows, vals, kk)
        return D, I

    def _rank(self, rows: np.ndarray, vals: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` of one query given its explicit (row, score) entries."""
        ids = self._ids[rows]
        pos = vals > 0
        take = _top(vals[pos], ids[pos], k)
        out_v, out_i = [vals[pos][take]], [ids[pos][take]]
        need = k - len(take)
        if need > 0:  # score-0 items next, by id: implicit zeros and explicit ones
            nonzero = rows[vals != 0]
            cand = self._by_id[: need + len(nonzero)]
            cand = cand[~np.isin(cand, nonzero)][:need]
            out_v.append(np.zeros(len(cand), np.float32))
            out_i.append(self._ids[cand])
            need -= len(cand)
        if need > 0:  # negative scores last
            neg = vals < 0
            take = _top(vals[neg], ids[neg], need)
            out_v.append(vals[neg][take])
            out_i.append(ids[neg][take])
        return np.concatenate(out_v), np.concatenate(out_i)

    # -------------------------------------------------------------- persist
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the index (live rows only) to ``path`` atomically."""
        r = self.rows()[np.flatnonzero(self._live)]
        buf = io.BytesIO()
        np.savez(
            buf, format=np.array(FORMAT), dim=np.int64(self.dim), ids=self._ids[self._live],
            data=r.data, indices=r.indices, indptr=r.indptr,
        )  # fmt: skip
        return atomic_write_bytes(Path(path), buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SparseIndex:
        """Read an index written by :meth:`save`; CbirError naming the file if it is not one."""
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["format"]) != FORMAT:
                    raise ValueError(f"format {z['format']}, expected {FORMAT}")
                dim = int(z["dim"])
                ids = z["ids"].astype(np.int64)
                rows = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=(len(ids), dim))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
            raise CbirError(
                f"{path}: not a readable sparse index ({e}); delete it and it is rebuilt from the features"
            ) from None
        index = cls(dim)
        index._rows = rows.astype(np.float32)
        index._ids = ids
        index._live = np.ones(len(ids), bool)
        return index

    def __repr__(self) -> str:
        return f"SparseIndex(dim={self.dim}, ntotal={self.ntotal})"


def load_sparse_index(path: str | os.PathLike[str]) -> SparseIndex:
    """:meth:`SparseIndex.load`."""
    return SparseIndex.load(path)


def make_sparse_index(index_type: str, dim: int) -> SparseIndex:
    """The index for sparse codes: ``Inverted`` (the only kind; exact)."""
    if index_type.lower() not in ("inverted", "flat"):
        raise CbirError(
            f"--index-type {index_type!r} is not an index for sparse codes; use Inverted (posting lists, exact)"
        )
    return SparseIndex(dim)

"""An embedded index split by id range into shard files, searched together, merged exactly.

A shard directory holds ``shards.json`` (kind, dimension, index type, and per shard its
file and id range ``[lo, hi]``) and one faiss file per shard. A query runs on every shard
(threads here; one process or machine per shard works the same, since only the per-shard
top-k travels) and :func:`merge_topk` merges the lists.

Exact, ties included: every list, per shard or merged, is the top ``k`` by (score
descending, id ascending) for float inner product, and by (Hamming distance, id) for
binary codes. :func:`exact_topk` makes one faiss index answer that way: it asks for more
than ``k`` until the ``k``-th score is not tied with the last one returned, then sorts.
So with exact (Flat) shards the merged answer equals the unsharded index's, tie for tie.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from cbir.codes.base import CodeKind, Ranked
from cbir.codes.registry import code_kind
from cbir.errors import CbirError
from cbir.utils import atomic_write_bytes

MANIFEST = "shards.json"
FORMAT = "cbir-shards-1"


def _binary(index: Any) -> bool:
    """Hamming distances (lower is better) rather than scores: a binary index."""
    return isinstance(index, faiss.IndexBinary) or hasattr(index, "bits")


def exact_topk(index: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, ids)`` of one faiss index in canonical order, ``k`` columns.

    Float indexes: scores descending; binary: Hamming distances ascending; ties by
    ascending id; missing entries are id -1 (score -inf, distance 2**31 - 1).
    """
    binary = _binary(index)
    nq = len(queries)
    worst = np.iinfo(np.int32).max if binary else -np.inf
    out_s = np.full((nq, k), worst, np.int32 if binary else np.float32)
    out_i = np.full((nq, k), -1, np.int64)
    n = int(index.ntotal)
    if n == 0 or nq == 0:
        return out_s, out_i
    rows = np.arange(nq)
    kk = min(n, k + 1)
    while len(rows):
        q = queries[rows]
        if not binary:
            q = np.ascontiguousarray(q, np.float32)
        s, i = index.search(q, kk)
        again = []
        for r, qi in enumerate(rows):
            valid = i[r] >= 0
            sr, ir = s[r][valid], i[r][valid]
            if kk < n and len(sr) == kk and len(sr) > k and sr[k - 1] == sr[-1]:
                again.append(qi)  # the k-th score is tied beyond the results: ask for more
                continue
            order = np.lexsort((ir, sr if binary else -sr))[:k]
            out_s[qi, : len(order)], out_i[qi, : len(order)] = sr[order], ir[order]
        rows, kk = np.asarray(again, np.int64), min(n, kk * 4)
    return out_s, out_i


def merge_topk(
    parts: list[tuple[np.ndarray, np.ndarray]], k: int, binary: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard canonical top-k lists into the canonical top-k of their union."""
    s = np.concatenate([p[0] for p in parts], axis=1)
    i = np.concatenate([p[1] for p in parts], axis=1)
    # missing entries (id -1) sort last: they carry the worst score
    key = s if binary else -s.astype(np.float64)
    order = np.lexsort((np.where(i < 0, np.iinfo(np.int64).max, i), key), axis=1)[:, :k]
    return np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)


@dataclass
class Shard:
    """One shard: its file and the (inclusive) id range it owns."""

    file: str
    lo: int
    hi: int
    n: int = 0


@dataclass
class ShardedIndex:
    """Shards of one index, each a faiss file for an id range.

    Args:
        root: the shard directory.
        kind: the code kind's name (:mod:`cbir.codes`): "float" (inner product) or
            "binary" (Hamming, packed codes).
        dim: vector dimension (bits for binary).
        index_type: the index type of every shard (``Flat`` / ``BFlat``: exact).
        shards: the shards, by ascending id range.
    """

    root: Path
    kind: str
    dim: int
    index_type: str
    shards: list[Shard] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)
    _indexes: list[Any] = field(default_factory=list, repr=False)

    @property
    def code(self) -> CodeKind:
        return code_kind(self.kind)

    # ------------------------------------------------------------- building
    @classmethod
    def build(
        cls,
        root: str | os.PathLike[str],
        ids: np.ndarray,
        vectors: np.ndarray,
        *,
        kind: str = "float",
        index_type: str | None = None,
        n_shards: int | None = None,
        ids_per_shard: int | None = None,
        source: dict[str, Any] | None = None,
    ) -> ShardedIndex:
        """Split ``(ids, vectors)`` by id range into shards (equal counts) and write them.

        Give ``n_shards`` or ``ids_per_shard`` (vectors per shard).
        """
        ids = np.asarray(ids, np.int64)
        if len(ids) != len(vectors):
            raise ValueError("build: one id per vector")
        if len(np.unique(ids)) != len(ids):
            raise CbirError("build: ids must be unique")
        order = np.argsort(ids, kind="stable")
        ids, vectors = ids[order], vectors[order]
        n = len(ids)
        if ids_per_shard:
            n_shards = max(1, -(-n // ids_per_shard))
        n_shards = max(1, min(n_shards or 1, max(n, 1)))
        code = code_kind(kind)
        if not code.shardable:
            raise CbirError(f"{kind} codes cannot be split into shards; search the index itself")
        dim = code.dim_of(vectors)
        index_type = index_type or code.default_index_type
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        self = cls(root, kind, dim, index_type, source=source or {})
        template = code.make(index_type, dim)
        code.train(template, vectors[:200_000], index_type)
        bounds = np.linspace(0, n, n_shards + 1).round().astype(int)
        for j in range(n_shards):
            a, b = bounds[j], bounds[j + 1]
            lo = int(ids[a]) if b > a else (self.shards[-1].hi + 1 if self.shards else 0)
            hi = int(ids[b]) - 1 if j + 1 < n_shards else np.iinfo(np.int64).max
            index = code.clone(template)
            code.add(index, vectors[a:b], ids[a:b])
            if j == 0:
                lo = np.iinfo(np.int64).min
            shard = Shard(f"shard-{j:05d}.{code.ext}", lo, hi, int(b - a))
            code.write(index, root / shard.file)
            self.shards.append(shard)
            self._indexes.append(index)
        self.save_manifest()
        return self

    @classmethod
    def from_store(
        cls,
        store: Any,
        root: str | os.PathLike[str],
        *,
        n_shards: int | None = None,
        ids_per_shard: int | None = None,
        index_type: str | None = None,
    ) -> ShardedIndex:
        """Shards of every live image of an IndexStore (its transform applied)."""
        from cbir.index.vector_index import current_transform

        t = current_transform(store)
        code = code_kind(t)
        if not code.shardable:
            raise CbirError(
                f"{store.root} holds {t.kind} codes: their index is searched whole, not in"
                " shards; search the index itself"
            )
        ids, vecs = [], []
        for i, f in store.iter_features():
            ids.append(i)
            vecs.append(t(f))
        all_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        all_vecs = np.concatenate(vecs) if vecs else code.empty(t.dim)
        if index_type is None:
            index_type = code.shard_type(store.config["index_type"])
        source = {"index": str(Path(store.root).resolve()), "generation": store.generation}
        return cls.build(
            root,
            all_ids,
            all_vecs,
            kind=t.kind,
            index_type=index_type,
            n_shards=n_shards,
            ids_per_shard=ids_per_shard,
            source=source,
        )

    # -------------------------------------------------------------- opening
    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> ShardedIndex:
        """Open a shard directory written by :meth:`build`."""
        root = Path(root)
        try:
            m = json.loads((root / MANIFEST).read_text())
        except FileNotFoundError:
            raise CbirError(
                f"{root}: no {MANIFEST} (build shards with `cbir shard INDEX --out {root}`)"
            ) from None
        except ValueError as e:
            raise CbirError(f"{root / MANIFEST}: not readable ({e})") from None
        if m.get("format") != FORMAT:
            raise CbirError(
                f"{root / MANIFEST}: format {m.get('format')!r}, this cbir reads {FORMAT}"
            )
        shards = [Shard(**s) for s in m["shards"]]
        self = cls(root, m["kind"], int(m["dim"]), m["index_type"], shards, m.get("source", {}))
        for s in self.shards:
            try:
                self._indexes.append(self.code.read(root / s.file))
            except RuntimeError as e:
                raise CbirError(
                    f"{root / s.file}: unreadable shard ({str(e).strip().splitlines()[-1]})"
                ) from None
        return self

    def save_manifest(self) -> None:
        """Write ``shards.json`` atomically."""
        m = {
            "format": FORMAT,
            "kind": self.kind,
            "dim": self.dim,
            "index_type": self.index_type,
            "shards": [s.__dict__ for s in self.shards],
            "source": self.source,
        }
        atomic_write_bytes(self.root / MANIFEST, json.dumps(m, indent=1).encode())

    # ------------------------------------------------------------- changing
    def shard_of(self, ids: np.ndarray) -> np.ndarray:
        """The shard number owning each id."""
        lows = np.array([s.lo for s in self.shards], np.int64)
        return np.searchsorted(lows, np.asarray(ids, np.int64), side="right") - 1

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors, each to the shard whose id range holds its id; then save those."""
        ids = np.asarray(ids, np.int64)
        where = self.shard_of(ids)
        for j in np.unique(where):
            sel = where == j
            self.code.add(self._indexes[j], vectors[sel], ids[sel])
            self._save(int(j))

    def remove(self, ids: np.ndarray) -> int:
        """Remove ids from their shards; returns how many were removed."""
        ids = np.asarray(ids, np.int64)
        where = self.shard_of(ids)
        removed = 0
        for j in np.unique(where):
            try:
                removed += int(self._indexes[j].remove_ids(np.ascontiguousarray(ids[where == j])))
            except RuntimeError:
                raise CbirError(
                    f"index type {self.index_type!r} cannot remove; rebuild the shards"
                ) from None
            self._save(int(j))
        return removed

    def _save(self, j: int) -> None:
        self.code.write(self._indexes[j], self.root / self.shards[j].file)
        self.shards[j].n = int(self._indexes[j].ntotal)
        self.save_manifest()

    # ------------------------------------------------------------ searching
    @property
    def ntotal(self) -> int:
        return sum(int(x.ntotal) for x in self._indexes)

    def search(
        self, queries: np.ndarray, k: int, threads: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Canonical top-``k`` over all shards: ``(scores or distances, ids)``."""
        if k < 1:
            raise CbirError("k must be at least 1")
        code = self.code
        for x in self._indexes:
            code.tune(x)
        q = code.as_codes(queries)
        workers = threads or min(len(self._indexes), os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            parts = list(pool.map(lambda x: exact_topk(x, q, k), self._indexes))
        return merge_topk(parts, k, code.lower_is_better)


class ShardBackend:
    """A :class:`~cbir.index.backends.base.VectorBackend` over the shard files of an index.

    The index directory gives the model and the rows (paths); the shards must be of its
    current generation (``cbir index ... --store shards:DIR`` or ``cbir shard`` keep them so).
    """

    local = False
    index = None

    def __init__(self, shard_dir: str | os.PathLike[str]) -> None:
        self.shard_dir = Path(shard_dir)
        self.spec = f"shards:{self.shard_dir}"
        self.shards: ShardedIndex | None = None
        self.transform: Any = None
        self.gen = -1
        self._mtime: int | None = None

    def refresh(self, store: Any) -> None:
        """Reopen the shards when their manifest or the index changed; refuse stale ones."""
        from cbir.index.vector_index import current_transform

        try:
            mtime = (self.shard_dir / MANIFEST).stat().st_mtime_ns
        except OSError:
            raise CbirError(
                f"{self.shard_dir}: no {MANIFEST}; build it with `cbir shard`"
            ) from None
        gen = store.generation
        if mtime == self._mtime and gen == self.gen:
            return
        sh = ShardedIndex.open(self.shard_dir)
        src = sh.source.get("index")
        if src and Path(src) != Path(store.root).resolve():
            raise CbirError(f"{self.shard_dir} holds shards of {src}, not of {store.root}")
        if sh.source.get("generation") != gen:
            raise CbirError(
                f"{self.shard_dir} is of generation {sh.source.get('generation')}, the index is at"
                f" {gen}; rebuild: cbir shard {store.root} --out {self.shard_dir} --shards N"
            )
        self.shards, self.transform = sh, current_transform(store)
        self.gen, self._mtime = gen, mtime

    @property
    def ntotal(self) -> int:
        return 0 if self.shards is None else self.shards.ntotal

    def search(self, q: Any, k: int) -> Ranked:
        assert self.shards is not None
        return self.shards.code.search(self.shards, q, k, self.shards.dim)

    def search_among(self, q: Any, k: int, allowed: np.ndarray) -> Ranked | None:
        return None

    def close(self) -> None:
        self.shards = None

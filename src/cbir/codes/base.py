"""What a code kind is: the one place that knows how codes of that kind are indexed.

A code kind (float vectors, binary codes, sparse codes) owns making an index of an
``index_type`` string, reading and writing its file, adding, removing, training,
searching, exact search over a subset of ids (filtered search) and the score convention
of its hits. Callers hold a :class:`CodeKind` (``code_kind(transform.kind)``) and never
branch on the kind's name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from cbir.errors import CbirError


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


#: ``(scores, ids, distances or None)``: scores higher is better, ids -1 pad, distances
#: are the Hamming distances of binary codes.
Ranked = tuple[np.ndarray, np.ndarray, np.ndarray | None]


class CodeKind(ABC):
    """One kind of code and its index. Subclasses set the class attributes below.

    Attributes:
        name: the kind's name as a transform reports it ("float", "binary", "sparse").
        ext: the index file's extension.
        default_index_type: the index type a new index of this kind gets.
        exact_type: an exact index type (the subset searches of filtered search).
        metric: how :func:`cbir.eval.metrics.evaluate_retrieval` compares codes.
        lower_is_better: raw search values are distances (binary) rather than scores.
        rerankable: query expansion / k-reciprocal re-ranking applies (cbir.search.rerank).
        shardable: the index can be split into id-range shards (cbir.index.backends.shards).
    """

    name: ClassVar[str]
    ext: ClassVar[str]
    default_index_type: ClassVar[str]
    exact_type: ClassVar[str]
    metric: ClassVar[str] = "cosine"
    lower_is_better: ClassVar[bool] = False
    rerankable: ClassVar[bool] = True
    shardable: ClassVar[bool] = True
    #: Dense float query vectors already in the codes' space can be searched (joint text).
    float_queries: ClassVar[bool] = True
    #: The Milvus vector field type of these codes (None: Milvus cannot store them).
    milvus_vector: ClassVar[str | None] = "FLOAT_VECTOR"
    #: What a code's length is called in options and results (``--dim`` or ``--bits``).
    width_option: ClassVar[str] = "dim"

    def scans_everything(self, index_type: str) -> bool:
        """Whether a search of this index type scores every stored code (its cost grows
        with the collection): the exact float scan; binary and sparse indexes are not."""
        return False

    # ---------------------------------------------------------------- codes
    def describe(self, dim: int) -> str:
        """``"128-d"`` or ``"64 bits"``: the size of one code, for people."""
        return f"{dim}-d"

    def width(self, dim: int) -> int:
        """Columns of one code as stored (bytes for binary codes)."""
        return dim

    def dtype(self) -> Any:
        return np.float32

    def empty(self, dim: int) -> Any:
        """No codes: a ``(0, width)`` array of the kind's dtype."""
        return np.zeros((0, self.width(dim)), self.dtype())

    def dim_of(self, codes: Any) -> int:
        """The dimension (bits for binary) of stored codes."""
        return int(codes.shape[1])

    def as_codes(self, codes: Any) -> Any:
        """Codes in the form the index takes (contiguous float32 rows for float)."""
        return codes

    def check_rows(self, codes: Any, dim: int) -> np.ndarray:
        """``codes`` as a dense 2-d array of ``dim``-d rows of the kind's dtype, or CbirError."""
        v = np.ascontiguousarray(codes, dtype=self.dtype())
        if v.ndim != 2 or v.shape[1] != self.width(dim):
            raise CbirError(f"vectors of shape {v.shape}: expected (n, {dim}) float32")
        return v

    @abstractmethod
    def encode(self, transform: Any, features: np.ndarray) -> Any:
        """Codes of backbone ``features`` through a learned head (``transform.outputs``)."""

    def float_view(self, transform: Any, features: np.ndarray) -> np.ndarray:
        """Unit float vectors of the head's outputs (re-ranking, NMI)."""
        return l2_normalize(transform.outputs(features))

    @abstractmethod
    def scores(self, q: Any, db: Any, dim: int) -> np.ndarray:
        """Dense ``(len(q), len(db))`` scores, higher is better (exact; the kind's score
        convention: cosine, or ``1 - hamming / bits``)."""

    def eval_scorer(self, q: Any, db: Any) -> Callable[[np.ndarray], np.ndarray] | None:
        """For evaluation: ``scorer(query_rows) -> (len(rows), len(db))`` exact scores where
        they are not the inner products of the two sides' codes (asymmetric codes); None:
        inner products (or Hamming distances) of ``q`` and ``db``."""
        return None

    def to_scores(self, raw: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(scores, distances or None) of raw search values (see :attr:`lower_is_better`)."""
        return raw, None

    # ---------------------------------------------------------------- index
    @abstractmethod
    def make(self, index_type: str, dim: int) -> Any:
        """A new empty index of ``index_type`` for codes of ``dim``."""

    @abstractmethod
    def read(self, path: str | Path) -> Any:
        """The index in ``path`` (written by :meth:`write`)."""

    def write(self, index: Any, path: str | Path) -> None:
        """Write ``index`` to ``path`` atomically."""
        index.save(path)

    def ids(self, index: Any) -> np.ndarray:
        """The int64 ids stored in ``index``."""
        return np.asarray(index.ids(), np.int64)

    def add(self, index: Any, codes: Any, ids: np.ndarray) -> None:
        """Add ``codes`` under ``ids``."""
        if len(ids):
            index.add_with_ids(self.as_codes(codes), np.asarray(ids, np.int64))

    def remove(self, index: Any, ids: np.ndarray) -> bool:
        """Remove ``ids``; False when the index type cannot remove (the caller rebuilds)."""
        try:
            index.remove_ids(np.ascontiguousarray(ids, np.int64))
        except (RuntimeError, NotImplementedError):
            return False
        return True

    def needs_training(self, index: Any) -> bool:
        return not getattr(index, "is_trained", True)

    def train(self, index: Any, sample: Any, index_type: str) -> None:
        """Train ``index`` on ``sample`` codes when its type needs it."""
        if self.needs_training(index):
            index.train(sample)

    def clone(self, index: Any) -> Any:
        """An empty index like ``index`` (trained the same; the shards of one index)."""
        raise CbirError(f"{self.name} codes cannot be split into shards")

    def shard_type(self, index_type: str) -> str:
        """The index type of the shards of an index of ``index_type`` (cbir.index.backends.shards)."""
        return index_type

    def tune(self, index: Any, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Set the search parameters of an approximate index (IVF nprobe, HNSW efSearch);
        nothing to set by default."""
        return None

    # --------------------------------------------------------------- search
    def search_raw(self, index: Any, q: Any, k: int, **kw: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(raw values, ids)`` of ``index.search`` (scores, or distances for binary)."""
        return index.search(self.as_codes(q), k, **kw)

    def search(self, index: Any, q: Any, k: int, dim: int | None = None) -> Ranked:
        """Top-``k`` of each query row: ``(scores, ids, distances or None)``; ``dim``:
        the codes' dimension (bits), read from the index when not given."""
        raw, ids = self.search_raw(index, q, k)
        scores, dist = self.to_scores(raw, dim or self._dim(index))
        return scores, ids, dist

    def search_among(self, index: Any, q: Any, k: int, allowed: np.ndarray) -> Ranked | None:
        """Top-``k`` among ``allowed`` ids filtered inside the index, or None where the index
        cannot filter (or found fewer than ``k`` for some row): the caller searches otherwise."""
        return None

    def rescore(self, q: Any, codes: Any, ids: np.ndarray, k: int, dim: int) -> Ranked:
        """Exact top-``k`` of ``q`` over just ``codes`` (with ``ids``): a flat index of them."""
        index = self.make(self.exact_type, dim)
        self.add(index, codes, ids)
        return self.search(index, q, min(k, len(ids)), dim)

    def _dim(self, index: Any) -> int:
        for attr in ("bits", "dim", "d"):
            if getattr(index, attr, None):
                return int(getattr(index, attr))
        return 0

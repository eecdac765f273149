"""Float vectors: unit rows in a faiss index, inner product = cosine similarity."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import faiss
import numpy as np

from cbir.codes.base import CodeKind, Ranked, l2_normalize
from cbir.index import faiss_index as fi


class FloatCodes(CodeKind):
    """float32 rows in any faiss ``index_factory`` index (inner product); score: cosine."""

    name: ClassVar[str] = "float"
    ext: ClassVar[str] = "faiss"
    default_index_type: ClassVar[str] = "Flat"
    exact_type: ClassVar[str] = "Flat"

    def scans_everything(self, index_type: str) -> bool:
        return not any(t in index_type.upper() for t in ("HNSW", "IVF", "NSG", "LSH"))

    def as_codes(self, codes: Any) -> np.ndarray:
        return np.ascontiguousarray(codes, np.float32)

    def encode(self, transform: Any, features: np.ndarray) -> np.ndarray:
        return l2_normalize(transform.outputs(features))

    def scores(self, q: Any, db: Any, dim: int) -> np.ndarray:
        return np.asarray(q @ db.T)

    def make(self, index_type: str, dim: int) -> Any:
        return fi.make_float_index(index_type, dim)

    def read(self, path: str | Path) -> Any:
        return fi.read_index(path)

    def write(self, index: Any, path: str | Path) -> None:
        fi.write_index(index, path)

    def ids(self, index: Any) -> np.ndarray:
        return fi.index_ids(index)

    def remove(self, index: Any, ids: np.ndarray) -> bool:
        return fi.try_remove(index, ids)

    def train(self, index: Any, sample: Any, index_type: str) -> None:
        if not index.is_trained:
            fi.train_if_needed(index, sample, index_type)

    def clone(self, index: Any) -> Any:
        return faiss.clone_index(index)

    def tune(self, index: Any, nprobe: int | None = None, ef_search: int | None = None) -> None:
        fi.set_search_params(index, nprobe, ef_search)

    def search_among(self, index: Any, q: Any, k: int, allowed: np.ndarray) -> Ranked | None:
        """faiss filters inside the search (``IDSelectorBatch``); an approximate index (HNSW,
        IVF) may find fewer than ``k`` passing vectors, and then None."""
        try:
            params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed))
            scores, ids = index.search(self.as_codes(q), k, params=params)
        except (RuntimeError, TypeError):  # an index type without selector support
            return None
        if bool(((ids >= 0).sum(1) >= k).all()):
            return scores, ids, None
        return None

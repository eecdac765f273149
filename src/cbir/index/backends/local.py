"""The index's own faiss / binary / sparse file, brought up to date by :mod:`cbir.index.vector_index`."""

from __future__ import annotations

from typing import Any

import numpy as np

from cbir.codes.base import Ranked
from cbir.codes.registry import code_kind
from cbir.index import vector_index


class LocalBackend:
    """The search index file of the index directory, loaded into this process."""

    spec = "local"
    local = True

    def __init__(self) -> None:
        self.index: Any = None
        self.transform: Any = None
        self.gen = -1

    def refresh(self, store: Any) -> None:
        if store.generation == self.gen:
            return
        index, transform, gen = vector_index.load(store)
        cfg = store.config
        code_kind(transform).tune(index, cfg.get("nprobe"), cfg.get("ef_search"))
        self.index, self.transform, self.gen = index, transform, gen

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def search(self, q: Any, k: int) -> Ranked:
        return code_kind(self.transform).search(self.index, q, k, self.transform.dim)

    def search_among(self, q: Any, k: int, allowed: np.ndarray) -> Ranked | None:
        return code_kind(self.transform).search_among(self.index, q, k, allowed)

    def close(self) -> None:
        self.index = None

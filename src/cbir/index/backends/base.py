"""Where a searcher's vectors live: the :class:`VectorBackend` protocol.

The index directory (an :class:`~cbir.index.store.IndexStore`) stays the source of truth
for rows, features and the model; a backend answers nearest-neighbour queries over the
codes of its current generation: the local faiss file (:mod:`.local`), id-range shard
files (:mod:`.shards`) or a Milvus collection (:mod:`.milvus`). :func:`open_backend`
in :mod:`cbir.index.backends` picks one by spec.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from cbir.codes.base import Ranked


class VectorBackend(Protocol):
    """Searches the codes of one index.

    Attributes:
        spec: how it was opened (``local``, ``shards:DIR``, ``milvus:URI#coll``).
        local: the index's own file held in this process (re-ranking, inline searches).
        index: the in-memory index object of a local backend (None otherwise).
        transform: the index's transform (features -> codes) at :attr:`gen`.
        gen: the store generation the backend answers for.
    """

    spec: str
    local: bool
    index: Any
    transform: Any
    gen: int

    def refresh(self, store: Any) -> None:
        """Catch up with ``store``'s generation (cheap when nothing changed)."""
        ...

    @property
    def ntotal(self) -> int:
        """Codes searchable now."""
        ...

    def search(self, q: Any, k: int) -> Ranked:
        """Top-``k`` per row of transformed queries ``q``: ``(scores, ids, distances)``."""
        ...

    def search_among(self, q: Any, k: int, allowed: np.ndarray) -> Ranked | None:
        """Top-``k`` among ``allowed`` ids filtered inside the backend, or None where it
        cannot (the caller then searches exactly over those ids, or deeper)."""
        ...

    def close(self) -> None: ...

"""What a search returns, and query rows already in the index's space.

Shared by :mod:`cbir.search.searcher`, :mod:`cbir.search.text` and :mod:`cbir.search.joint`
(a module of its own, so that none of them imports another for these types).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass
class Hit:
    """One ranked result. ``score``: cosine similarity for float indexes, and
    ``1 - hamming / bits`` for binary ones (whose ``distance`` is the Hamming distance)."""

    rank: int
    id: int
    path: str
    score: float
    distance: float | None = None
    #: for text queries: "metadata" (FTS5 bm25), "classes" (ImageNet keywords) or "joint"
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("distance", "source"):
            if d[key] is None:
                del d[key]
        return d


class IndexVectors(np.ndarray):
    """Query rows already in the index's space (not backbone features): a joint model's
    text side embeds captions there (:mod:`cbir.search.joint`)."""

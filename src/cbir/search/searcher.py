"""Search an index by image file, by folder of images, by stored id, or by features."""

from __future__ import annotations

import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cbir.data.folder import find_images
from cbir.data.images import decode, read_bytes
from cbir.errors import CbirError, ImageError
from cbir.index import vector_index
from cbir.index.store import IndexStore


@dataclass
class Hit:
    """One ranked result. ``score``: cosine similarity for float indexes, and
    ``1 - hamming / bits`` for binary ones (whose ``distance`` is the Hamming distance)."""

    rank: int
    id: int
    path: str
    score: float
    distance: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["distance"] is None:
            del d["distance"]
        return d


class Searcher:
    """Read-only access to an index; picks up new commits between searches.

    Args:
        index_dir: the index directory.
    """

    def __init__(self, index_dir: str | os.PathLike[str]) -> None:
        self.store = IndexStore.open(index_dir)
        self._lock = threading.Lock()
        self._gen = -1
        self._index: Any = None
        self.transform: Any = None
        self._backbone: Any = None
        self.refresh()

    def refresh(self) -> None:
        """Reload the index if a commit happened since it was loaded."""
        with self._lock:
            gen = self.store.generation
            if gen != self._gen:
                index, transform, gen = vector_index.load(self.store)
                if transform.kind == "float":
                    from cbir.index.faiss_index import set_search_params

                    cfg = self.store.config
                    set_search_params(index, cfg.get("nprobe"), cfg.get("ef_search"))
                self._index, self.transform, self._gen = index, transform, gen

    @property
    def backbone(self):
        if self._backbone is None:
            from cbir.pipeline import backbone_for

            self._backbone = backbone_for(self.store)
        return self._backbone

    def __len__(self) -> int:
        return self.store.count()

    # ---------------------------------------------------------------- embed
    def embed_bytes(self, data: bytes, name: str = "<upload>") -> np.ndarray:
        """Backbone features (1, dim) of one encoded image; ImageError if it is not one."""
        bb = self.backbone
        img = decode(data, name, draft_size=bb.preprocess.size)
        feats, _ = bb.run(bb.preprocess(img)[None])
        return feats

    def embed_file(self, path: str | os.PathLike[str]) -> np.ndarray:
        return self.embed_bytes(read_bytes(path), str(path))

    # --------------------------------------------------------------- search
    def search_features(self, features: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """Top-``k`` hits for each row of backbone ``features``."""
        self.refresh()
        with self._lock:
            index, transform = self._index, self.transform
        if k < 1:
            raise CbirError("k must be at least 1")
        n = self.store.count()
        if n == 0:
            return [[] for _ in range(len(features))]
        q = transform(np.asarray(features, np.float32))
        kk = min(k, n)
        if transform.kind == "binary":
            dist, ids = index.search(q, kk)
            scores = 1.0 - dist.astype(np.float64) / transform.dim
        else:
            scores, ids = index.search(np.ascontiguousarray(q, np.float32), kk)
            dist = None
        out: list[list[Hit]] = []
        all_ids = [int(i) for i in np.unique(ids) if i >= 0]
        rows = {r["id"]: r for r in self.store.rows(all_ids)}
        for qi in range(len(q)):
            hits: list[Hit] = []
            for j in range(ids.shape[1]):
                id_ = int(ids[qi, j])
                if id_ < 0 or id_ not in rows:
                    continue
                hits.append(
                    Hit(
                        rank=len(hits) + 1,
                        id=id_,
                        path=rows[id_]["path"],
                        score=round(float(scores[qi, j]), 6),
                        distance=None if dist is None else float(dist[qi, j]),
                    )
                )
            out.append(hits)
        return out

    def search_id(self, id_: int, k: int = 10) -> list[Hit]:
        """Neighbours of an indexed image (itself first)."""
        if self.store.row(id_) is None:
            raise CbirError(f"id:{id_} is not in {self.store.root}")
        return self.search_features(self.store.features([id_]), k)[0]

    def search_file(self, path: str | os.PathLike[str], k: int = 10) -> list[Hit]:
        return self.search_features(self.embed_file(path), k)[0]

    def search_query(self, query: str, k: int = 10) -> list[tuple[str, list[Hit] | ImageError]]:
        """Resolve a CLI QUERY (image file, folder of images, or ``id:N``) and search each."""
        if query.startswith("id:"):
            try:
                id_ = int(query[3:])
            except ValueError:
                raise CbirError(f"{query!r}: expected id:N with N a number") from None
            return [(query, self.search_id(id_, k))]
        p = Path(query)
        if not p.exists():
            raise CbirError(f"{query}: no such file or folder (QUERY is an image, a folder, or id:N)")
        files = find_images(p) if p.is_dir() else [p]
        if not files:
            raise CbirError(f"{query}: no images in this folder")
        out: list[tuple[str, list[Hit] | ImageError]] = []
        for f in files:
            try:
                out.append((str(f), self.search_file(f, k)))
            except ImageError as e:
                out.append((str(f), e))
        return out

    def close(self) -> None:
        self.store.close()

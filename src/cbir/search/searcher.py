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
    #: for text queries: "metadata" (FTS5 bm25), "classes" (ImageNet keywords) or "joint"
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("distance", "source"):
            if d[key] is None:
                del d[key]
        return d


#: Times a search is run again when commits keep overtaking it.
READ_ATTEMPTS = 20


class IndexVectors(np.ndarray):
    """Query rows already in the index's space (not backbone features): a joint model's
    text side embeds captions there (:mod:`cbir.search.joint`)."""


class Searcher:
    """Read-only access to an index; picks up new commits between searches.

    Args:
        index_dir: the index directory.
        rerank: re-rank every image search (a :class:`cbir.search.rerank.Rerank`: query
            expansion or k-reciprocal; float and sparse indexes).
    """

    def __init__(self, index_dir: str | os.PathLike[str], rerank: Any = None) -> None:
        self.rerank = rerank
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
            from cbir.backbones.registry import backbone_for

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
    def where(self, where: Any) -> Any:
        """A ``--where`` filter parsed against this index's fields (None stays None)."""
        from cbir.index.metadata import known_fields
        from cbir.search.where import Where, parse_where

        if where is None or isinstance(where, Where):
            return where
        return parse_where(str(where), known_fields(self.store.conn))

    def search_features(
        self, features: np.ndarray, k: int = 10, where: Any = None
    ) -> list[list[Hit]]:
        """Top-``k`` hits for each row of backbone ``features``.

        ``where``: a filter (see :mod:`cbir.search.where`): only images that pass it, still
        ``k`` of them when that many pass. The answer comes from one committed state: a
        search that a commit overtook (its index of one generation, the metadata rows of
        the next) is run again.
        """
        if k < 1:
            raise CbirError("k must be at least 1")
        where = self.where(where)
        for attempt in range(READ_ATTEMPTS):
            try:
                out, gen = self._search_once(features, k, where)
            except CbirError:  # e.g. a segment of an older generation removed meanwhile
                if attempt == READ_ATTEMPTS - 1 or self.store.generation == self._gen:
                    raise
                continue
            if self.store.generation == gen:
                return out
        return out

    def _search_once(
        self, features: np.ndarray, k: int, where: Any = None
    ) -> tuple[list[list[Hit]], int]:
        """(hits, generation of the index searched); the rows may be of a later generation."""
        self.refresh()
        with self._lock:
            index, transform, gen = self._index, self.transform, self._gen
        n = int(index.ntotal)  # the size of the index searched, not a later store count
        if n == 0:
            return [[] for _ in range(len(features))], gen
        if isinstance(features, IndexVectors):
            q = np.asarray(features).view(np.ndarray)
        else:
            q = transform(np.asarray(features, np.float32))
        kk = min(k, n)
        if self.rerank is not None and (where is not None or transform.kind == "binary"):
            raise CbirError(
                "re-ranking works on float and sparse indexes, without a --where filter"
            )
        if where is not None:
            from cbir.search.filtered import search_allowed
            from cbir.search.where import matching_ids

            allowed = np.fromiter(matching_ids(self.store.conn, where), np.int64)
            scores, ids, dist = search_allowed(index, transform, self.store, q, kk, allowed)
        elif transform.kind == "binary":
            dist, ids = index.search(q, kk)
            scores = 1.0 - dist.astype(np.float64) / transform.dim
        elif self.rerank is not None:  # query expansion / k-reciprocal (cbir.search.rerank)
            from cbir.search.rerank import search_reranked

            vectors = lambda i: transform(self.store.features(i.tolist()))  # noqa: E731
            scores, ids = search_reranked(self.rerank, index, q, kk, vectors)
            dist = None
        elif transform.kind == "sparse":  # CSR codes in an inverted index (cbir.index.sparse)
            scores, ids = index.search(q, kk)
            dist = None
        else:
            scores, ids = index.search(np.ascontiguousarray(q, np.float32), kk)
            dist = None
        out: list[list[Hit]] = []
        all_ids = [int(i) for i in np.unique(ids) if i >= 0]
        rows = {r["id"]: r for r in self.store.rows(all_ids)}
        for qi in range(q.shape[0]):
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
        return out, gen

    def search_vectors(self, vectors: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """Top-``k`` hits for rows already in the index's space (unit vectors of the
        index's dimension, e.g. a caption through a joint model's text head)."""
        v = np.ascontiguousarray(vectors, np.float32)
        if v.ndim != 2 or v.shape[1] != self.transform.dim or self.transform.kind != "float":
            raise CbirError(
                f"{self.store.root}: expected float query vectors of dimension {self.transform.dim}"
            )
        return self.search_features(v.view(IndexVectors), k)

    def search_id(self, id_: int, k: int = 10, where: Any = None) -> list[Hit]:
        """Neighbours of an indexed image (itself first, if it passes ``where``)."""
        if self.store.row(id_) is None:
            raise CbirError(f"id:{id_} is not in {self.store.root}")
        feats = self.store.features([id_])
        # where only when given: stores searched elsewhere (Milvus, shards) take (features, k)
        return (
            self.search_features(feats, k)
            if where is None
            else self.search_features(feats, k, where)
        )[0]

    def search_file(
        self, path: str | os.PathLike[str], k: int = 10, where: Any = None
    ) -> list[Hit]:
        feats = self.embed_file(path)
        return (
            self.search_features(feats, k)
            if where is None
            else self.search_features(feats, k, where)
        )[0]

    def search_text(
        self, text: str, k: int = 10, where: Any = None, mode: str = "auto"
    ) -> list[Hit]:
        """Images for a text query: ``mode`` "metadata" (FTS5 bm25 over sidecar / EXIF
        fields and tags), "classes" (ImageNet class keywords through MiniLM), "joint" (the
        index's VSE++ image-text model) or "auto"; see :mod:`cbir.search.text`."""
        from cbir.search.text import search_text

        return search_text(self, text, k, self.where(where), mode)

    def search_query(
        self, query: str, k: int = 10, where: Any = None
    ) -> list[tuple[str, list[Hit] | ImageError]]:
        """Resolve a CLI QUERY (image file, folder of images, or ``id:N``) and search each."""
        if query.startswith("id:"):
            try:
                id_ = int(query[3:])
            except ValueError:
                raise CbirError(f"{query!r}: expected id:N with N a number") from None
            return [(query, self.search_id(id_, k, where))]
        p = Path(query)
        if not p.exists():
            raise CbirError(
                f"{query}: no such file or folder (QUERY is an image, a folder, or id:N)"
            )
        files = find_images(p) if p.is_dir() else [p]
        if not files:
            raise CbirError(f"{query}: no images in this folder")
        out: list[tuple[str, list[Hit] | ImageError]] = []
        where = self.where(where)
        for f in files:
            try:
                out.append((str(f), self.search_file(f, k, where)))
            except ImageError as e:
                out.append((str(f), e))
        return out

    def close(self) -> None:
        self.store.close()

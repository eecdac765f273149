"""Search an index by image file, by folder of images, by stored id, or by features."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from cbir.codes.registry import code_kind
from cbir.data.folder import find_images
from cbir.data.images import decode, read_bytes
from cbir.errors import CbirError, ImageError
from cbir.index.backends import VectorBackend, open_backend
from cbir.index.store import IndexStore
from cbir.search.filtered import search_allowed
from cbir.search.hits import Hit, IndexVectors

__all__ = ["READ_ATTEMPTS", "Hit", "IndexVectors", "Searcher", "read_consistently"]


#: Times a read is run again when commits keep overtaking it.
READ_ATTEMPTS = 20

T = TypeVar("T")


def read_consistently(store: IndexStore, run: Callable[[], T]) -> tuple[T, int]:
    """Run a read until no commit happened during it: ``(result, generation)``.

    A read that a commit overtook (an index of one generation, metadata rows of the next)
    runs again, as does one that failed with CbirError because a file of the older
    generation went away meanwhile; ImageError (a bad query image) is never retried. The
    one retry loop of searches (:class:`Searcher`, the service).
    """
    for attempt in range(READ_ATTEMPTS):
        g0 = store.generation
        try:
            out = run()
        except ImageError:
            raise
        except CbirError:
            if store.generation == g0 or attempt == READ_ATTEMPTS - 1:
                raise
            continue
        if store.generation == g0:
            return out, g0
    return out, g0


class Searcher:
    """Read-only access to an index; picks up new commits between searches.

    Args:
        index_dir: the index directory (rows, features, the model).
        rerank: re-rank every image search (a :class:`cbir.search.rerank.Rerank`: query
            expansion or k-reciprocal; float and sparse codes in the local index).
        backend: where the codes are searched: a spec for
            :func:`cbir.index.backends.open_backend` (None or "local": the index's own
            file; "shards:DIR"; "milvus:URI[#collection]") or an open backend.
        tags: only hits with every one of these tags (Milvus backends).
    """

    def __init__(
        self,
        index_dir: str | os.PathLike[str],
        rerank: Any = None,
        backend: str | VectorBackend | None = None,
        tags: Sequence[str] = (),
    ) -> None:
        self.rerank = rerank
        self.store = IndexStore.open(index_dir)
        self._lock = threading.Lock()
        self._backbone: Any = None
        try:
            self.backend: VectorBackend = (
                open_backend(backend, self.store, tags=tags)
                if backend is None or isinstance(backend, str)
                else backend
            )
            if rerank is not None and not self.backend.local:
                raise CbirError(
                    f"re-ranking works on the index itself, not --store {self.backend.spec}"
                )
            self.refresh()
        except BaseException:
            self.store.close()
            raise

    def refresh(self) -> None:
        """Reload the index if a commit happened since it was loaded."""
        with self._lock:
            self.backend.refresh(self.store)

    @property
    def transform(self) -> Any:
        return self.backend.transform

    @property
    def local(self) -> bool:
        """The index's own file, searched in this process (not shards or Milvus)."""
        return self.backend.local

    @property
    def _index(self) -> Any:
        """The in-memory index of a local backend (None for shards and Milvus)."""
        return self.backend.index

    @property
    def _gen(self) -> int:
        return self.backend.gen

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
        self, features: np.ndarray, k: int = 10, where: Any = None, *, retry: bool = True
    ) -> list[list[Hit]]:
        """Top-``k`` hits for each row of backbone ``features``.

        ``where``: a filter (see :mod:`cbir.search.where`): only images that pass it, still
        ``k`` of them when that many pass. The answer comes from one committed state: a
        search that a commit overtook is run again (:func:`read_consistently`; ``retry``
        False: once, for a caller that retries the whole read itself).
        """
        if k < 1:
            raise CbirError("k must be at least 1")
        where = self.where(where)
        if not retry:
            return self._search_once(features, k, where)[0]
        return read_consistently(self.store, lambda: self._search_once(features, k, where)[0])[0]

    def _search_once(
        self, features: np.ndarray, k: int, where: Any = None
    ) -> tuple[list[list[Hit]], int]:
        """(hits, generation of the index searched); the rows may be of a later generation."""
        self.refresh()
        with self._lock:
            backend, transform, gen = self.backend, self.backend.transform, self.backend.gen
            n = backend.ntotal  # the size of the index searched, not a later store count
        if n == 0:
            return [[] for _ in range(len(features))], gen
        if isinstance(features, IndexVectors):
            q = np.asarray(features).view(np.ndarray)
        else:
            q = transform(np.asarray(features, np.float32))
        code = code_kind(transform)
        kk = min(k, n)
        if self.rerank is not None and (where is not None or not code.rerankable):
            raise CbirError(
                "re-ranking works on float and sparse indexes, without a --where filter"
            )
        if where is not None:
            from cbir.search.where import matching_ids

            allowed = np.fromiter(matching_ids(self.store.conn, where), np.int64)
            scores, ids, dist = search_allowed(backend, transform, self.store, q, kk, allowed)
        elif self.rerank is not None:  # query expansion / k-reciprocal (cbir.search.rerank)
            from cbir.search.rerank import search_reranked

            vectors = lambda i: transform(self.store.features(i.tolist()))  # noqa: E731
            scores, ids = search_reranked(self.rerank, backend.index, q, kk, vectors)
            dist = None
        else:
            scores, ids, dist = backend.search(q, kk)
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

    def search_vectors(
        self, vectors: np.ndarray, k: int = 10, where: Any = None
    ) -> list[list[Hit]]:
        """Top-``k`` hits for rows already in the index's space (unit vectors of the
        index's dimension, e.g. a caption through a joint model's text head; packed codes
        of a binary index), passing ``where`` if given."""
        code = code_kind(self.transform)
        if not code.float_queries:  # packed codes of a binary index (a DCMH text query)
            return self.search_features(
                code.check_rows(vectors, self.transform.dim).view(IndexVectors), k, where
            )
        v = np.ascontiguousarray(vectors, np.float32)
        if v.ndim != 2 or v.shape[1] != self.transform.dim:
            raise CbirError(
                f"{self.store.root}: expected float query vectors of dimension {self.transform.dim}"
            )
        return self.search_features(v.view(IndexVectors), k, where)

    def search_id(self, id_: int, k: int = 10, where: Any = None) -> list[Hit]:
        """Neighbours of an indexed image (itself first, if it passes ``where``)."""
        if self.store.row(id_) is None:
            raise CbirError(f"id:{id_} is not in {self.store.root}")
        return self.search_features(self.store.features([id_]), k, where)[0]

    def search_file(
        self, path: str | os.PathLike[str], k: int = 10, where: Any = None
    ) -> list[Hit]:
        return self.search_features(self.embed_file(path), k, where)[0]

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
        self.backend.close()
        self.store.close()

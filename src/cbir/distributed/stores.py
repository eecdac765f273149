"""External vector stores of an index, named by a spec string.

- ``shards:DIR``: id-range shard files (:mod:`cbir.index.backends.shards`), searched
  together with an exact merge.
- ``milvus:URI[#collection]``: a Milvus collection (:mod:`cbir.index.backends.milvus`;
  URI ``http://host:19530`` or a Milvus Lite ``FILE.db``).

pymilvus is imported only when a Milvus spec is given (the ``milvus`` extra).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cbir.errors import CbirError

if TYPE_CHECKING:
    from cbir.search.searcher import Searcher

SHARDS_PREFIX = "shards:"
DEFAULT_IDS_PER_SHARD = 1_000_000


def sync_store(index_dir: str | os.PathLike[str], spec: str | None) -> dict[str, Any] | None:
    """Bring the store ``spec`` (Milvus collection or shard directory) in step with the index.

    Returns what was done (``{"store": spec, ...}``), or None when ``spec`` is empty.
    """
    if not spec:
        return None
    from cbir.index.store import IndexStore

    store = IndexStore.open(index_dir)
    try:
        if spec.startswith(SHARDS_PREFIX):
            from cbir.index.backends.shards import MANIFEST, ShardedIndex

            root = spec[len(SHARDS_PREFIX) :]
            n_shards, per = None, DEFAULT_IDS_PER_SHARD
            with contextlib.suppress(OSError, ValueError, KeyError):
                with open(f"{root}/{MANIFEST}") as f:
                    n_shards, per = len(json.load(f)["shards"]), None
            sh = ShardedIndex.from_store(store, root, n_shards=n_shards, ids_per_shard=per)
            return {"store": spec, "shards": len(sh.shards), "total": sh.ntotal}
        from cbir.index.backends.milvus import open_for_store

        with open_for_store(spec, store) as m:
            return {"store": spec, **m.sync(store)}
    finally:
        store.close()


def open_store_searcher(
    index_dir: str | os.PathLike[str], spec: str, tags: Sequence[str] = ()
) -> Searcher:
    """A Searcher of ``index_dir`` that answers from the store ``spec``.

    Args:
        index_dir: the index (metadata, model, images).
        spec: ``shards:DIR`` or ``milvus:URI[#collection]``.
        tags: only images with all these tags (Milvus only).
    """
    from cbir.search.searcher import Searcher

    if spec.startswith(SHARDS_PREFIX) and tags:
        raise CbirError("tags filter a Milvus store only (milvus:URI), not shard files")
    return Searcher(index_dir, backend=spec, tags=tags)

"""Vector backends: where a searcher's codes live and are searched.

``open_backend(spec, store)``: ``None`` or ``"local"`` (the index's own file),
``"shards:DIR"`` (id-range shard files, :mod:`.shards`), ``"milvus:URI[#collection]"``
(a Milvus collection, :mod:`.milvus`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cbir.errors import CbirError
from cbir.index.backends.base import VectorBackend
from cbir.index.backends.local import LocalBackend

SHARDS_PREFIX = "shards:"
MILVUS_PREFIX = "milvus:"

__all__ = ["MILVUS_PREFIX", "SHARDS_PREFIX", "VectorBackend", "open_backend", "parse_spec"]


def parse_spec(spec: str | None) -> tuple[str, str]:
    """``(kind, rest)`` of a backend spec: ("local", ""), ("shards", DIR) or ("milvus", URI#coll)."""
    s = (spec or "").strip()
    if s in ("", "local"):
        return "local", ""
    for kind, prefix in (("shards", SHARDS_PREFIX), ("milvus", MILVUS_PREFIX)):
        if s.startswith(prefix):
            rest = s[len(prefix) :]
            if not rest:
                what = (
                    "a shard directory"
                    if kind == "shards"
                    else "a URI (http://host:19530 or FILE.db)"
                )
                raise CbirError(f"--store {spec!r}: {prefix} needs {what} after it")
            return kind, rest
    raise CbirError(
        f"--store {spec!r}: expected local, shards:DIR or milvus:URI[#collection]"
        " (URI: http://host:19530 or a milvus-lite FILE.db)"
    )


def open_backend(
    spec: str | None, store: Any = None, *, tags: Sequence[str] = (), path_prefix: str | None = None
) -> VectorBackend:
    """The backend named by ``spec`` for ``store`` (an IndexStore; Milvus needs it to check
    the model). ``tags`` / ``path_prefix``: filters only Milvus applies (CbirError elsewhere)."""
    kind, rest = parse_spec(spec)
    if kind == "milvus":
        from cbir.index.backends.milvus import MilvusBackend

        return MilvusBackend(f"{MILVUS_PREFIX}{rest}", store, tags=tags, path_prefix=path_prefix)
    if tags or path_prefix:
        hint = " (the embedded index filters in `cbir serve`)" if kind == "local" else ""
        raise CbirError(f"--tag needs --store milvus:URI{hint}")
    if kind == "shards":
        from cbir.index.backends.shards import ShardBackend

        return ShardBackend(rest)
    return LocalBackend()

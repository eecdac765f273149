"""Scale-out options of ``cbir index`` / ``cbir search`` and the ``cbir shard`` command.

- ``cbir index IMAGES --index DIR --engine ray [--ray-address A]``: embed on Ray.
- ``cbir index ... --store milvus:URI[#collection]``: after indexing, sync the vectors and
  metadata into Milvus; ``--store shards:DIR``: rebuild the shard files.
- ``cbir search DIR QUERY --store milvus:URI [--tag T]`` or ``--store shards:DIR``.
- ``cbir shard DIR --out SHARDS --shards N``: split an index by id range.

Ray and pymilvus are imported only when asked for (extras ``ray`` and ``milvus``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

from cbir.errors import CbirError

SHARDS_PREFIX = "shards:"
DEFAULT_IDS_PER_SHARD = 1_000_000


def add_index_options(sp: argparse.ArgumentParser) -> None:
    """``--engine``, ``--ray-address``, ``--ray-workers``, ``--store`` on ``cbir index``."""
    sp.add_argument("--engine", choices=("local", "ray"), default="local",
                    help="where images are decoded and embedded (ray: an actor pool on Ray Data)")  # fmt: skip
    sp.add_argument("--ray-address", default=None, metavar="ADDRESS",
                    help="join this Ray cluster (default with --engine ray: start a local Ray)")  # fmt: skip
    sp.add_argument("--ray-workers", type=int, default=None, metavar="N",
                    help="Ray actors, one onnxruntime session each (default: one per CPU)")  # fmt: skip
    sp.add_argument("--store", default=None, metavar="milvus:URI|shards:DIR",
                    help="also keep the vectors in Milvus (http://host:19530 or FILE.db, #collection"
                    " optional) or in id-range shard files")  # fmt: skip


def add_search_options(sp: argparse.ArgumentParser) -> None:
    """``--store`` and ``--tag`` on ``cbir search``."""
    sp.add_argument("--store", default=None, metavar="milvus:URI|shards:DIR",
                    help="search the Milvus collection or the shard files of this index")  # fmt: skip
    sp.add_argument("--tag", action="append", default=[], metavar="TAG",
                    help="only images with this tag (repeatable; needs --store milvus:...)")  # fmt: skip


@contextlib.contextmanager
def engine_for(args: argparse.Namespace) -> Iterator[Any]:
    """The ``engine`` for :func:`cbir.pipeline.index_folder` (None: this process)."""
    if getattr(args, "engine", "local") != "ray":
        if getattr(args, "ray_address", None):
            raise CbirError("--ray-address needs --engine ray")
        yield None
        return
    try:
        from cbir.distributed.ray_embed import RayEngine
    except ImportError as e:
        raise CbirError(
            f"--engine ray needs the ray extra: pip install 'cbir[ray]' ({e})"
        ) from None
    engine = RayEngine(address=args.ray_address, workers=args.ray_workers)
    try:
        yield engine
    finally:
        engine.close()


def sync_store(index_dir: str, spec: str | None) -> dict[str, Any] | None:
    """Bring ``--store`` (Milvus collection or shard directory) in step with the index."""
    if not spec:
        return None
    from cbir.index.store import IndexStore

    store = IndexStore.open(index_dir)
    try:
        if spec.startswith(SHARDS_PREFIX):
            from cbir.distributed.shards import MANIFEST, ShardedIndex

            root = spec[len(SHARDS_PREFIX) :]
            n_shards, per = None, DEFAULT_IDS_PER_SHARD
            with contextlib.suppress(OSError, ValueError, KeyError):
                with open(f"{root}/{MANIFEST}") as f:
                    n_shards, per = len(json.load(f)["shards"]), None
            sh = ShardedIndex.from_store(store, root, n_shards=n_shards, ids_per_shard=per)
            return {"store": spec, "shards": len(sh.shards), "total": sh.ntotal}
        from cbir.distributed.milvus_store import open_for_store

        with open_for_store(spec, store) as m:
            return {"store": spec, **m.sync(store)}
    finally:
        store.close()


def open_searcher(args: argparse.Namespace) -> Any:
    """A Searcher for ``--store`` (None: the index's own faiss file)."""
    spec = getattr(args, "store", None)
    tags = getattr(args, "tag", []) or []
    if not spec:
        if tags:
            raise CbirError(
                "--tag needs --store milvus:URI (the embedded index filters in `cbir serve`)"
            )
        return None
    if spec.startswith(SHARDS_PREFIX):
        if tags:
            raise CbirError("--tag needs --store milvus:URI")
        from cbir.distributed.shards import ShardSearcher

        return ShardSearcher(args.index_dir, spec[len(SHARDS_PREFIX) :])
    from cbir.distributed.milvus_store import MilvusSearcher

    return MilvusSearcher(args.index_dir, spec, tags=tags)


def cmd_shard(args: argparse.Namespace) -> int:
    from cbir.distributed.shards import ShardedIndex
    from cbir.index.store import IndexStore

    if not args.shards and not args.ids_per_shard:
        raise CbirError("give --shards N or --ids-per-shard N")
    store = IndexStore.open(args.index_dir)
    try:
        sh = ShardedIndex.from_store(store, args.out, n_shards=args.shards,
                                     ids_per_shard=args.ids_per_shard, index_type=args.index_type)  # fmt: skip
    finally:
        store.close()
    info = {"out": str(sh.root), "kind": sh.kind, "index_type": sh.index_type, "total": sh.ntotal,
            "shards": [s.__dict__ for s in sh.shards]}  # fmt: skip
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"{sh.ntotal} vectors in {len(sh.shards)} shard(s) under {sh.root} ({sh.index_type})")
        for s in sh.shards:
            print(f"  {s.file}: {s.n} vectors, ids {s.lo if s.lo > -(2**62) else '-inf'}.."
                  f"{s.hi if s.hi < 2**62 else 'inf'}")  # fmt: skip
    return 0


def register(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``cbir shard``."""
    sp = add(
        "shard",
        cmd_shard,
        "Split an index by id range into shard files searched together (exact merge).",
    )
    sp.add_argument("index_dir")
    sp.add_argument(
        "--out", required=True, help="shard directory (shards.json + one faiss file per shard)"
    )
    sp.add_argument("--shards", type=int, default=None, help="number of shards (equal counts)")
    sp.add_argument("--ids-per-shard", type=int, default=None, help="or: vectors per shard")
    sp.add_argument(
        "--index-type", default=None, help="faiss index of each shard (default: the index's)"
    )
    sp.add_argument("--json", action="store_true")

"""Scale-out options of ``cbir index`` / ``cbir search`` and the ``cbir shard`` command.

- ``cbir index IMAGES --index DIR --engine ray [--ray-address A]``: embed on Ray.
- ``cbir index ... --store milvus:URI[#collection]``: after indexing, sync the vectors and
  metadata into Milvus; ``--store shards:DIR``: rebuild the shard files.
- ``cbir search DIR QUERY --store milvus:URI [--tag T]`` or ``--store shards:DIR``.
- ``cbir shard DIR --out SHARDS --shards N``: split an index by id range.

The library side is :mod:`cbir.distributed.engine` and :mod:`cbir.distributed.stores`;
Ray and pymilvus are imported only when asked for (extras ``ray`` and ``milvus``).
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from cbir.cli.common import AddCommand, add_index_argument
from cbir.distributed.stores import SHARDS_PREFIX, open_store_searcher
from cbir.errors import CbirError

if TYPE_CHECKING:
    from cbir.search.searcher import Searcher


def add_index_options(sp: argparse.ArgumentParser) -> None:
    """``--engine``, ``--ray-address``, ``--ray-workers``, ``--store`` on ``cbir index``."""
    sp.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="where images are decoded and embedded (ray: an actor pool on Ray Data)",
    )
    sp.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDRESS",
        help="join this Ray cluster (default with --engine ray: start a local Ray)",
    )
    sp.add_argument(
        "--ray-workers",
        type=int,
        default=None,
        metavar="N",
        help="Ray actors, one onnxruntime session each (default: one per CPU)",
    )
    sp.add_argument(
        "--store",
        default=None,
        metavar="milvus:URI|shards:DIR",
        help="also keep the vectors in Milvus (http://host:19530 or FILE.db, #collection"
        " optional) or in id-range shard files",
    )


def add_search_options(sp: argparse.ArgumentParser) -> None:
    """``--store`` and ``--tag`` on ``cbir search``."""
    sp.add_argument(
        "--store",
        default=None,
        metavar="milvus:URI|shards:DIR",
        help="search the Milvus collection or the shard files of this index",
    )
    sp.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="TAG",
        help="only images with this tag (repeatable; needs --store milvus:...)",
    )


def open_searcher(args: argparse.Namespace) -> Searcher | None:
    """A Searcher for ``--store`` and ``--tag`` (None: the index's own faiss file)."""
    spec, tags = args.store, args.tag or []
    if not spec:
        if tags:
            raise CbirError(
                "--tag needs --store milvus:URI (the embedded index filters in `cbir serve`)"
            )
        return None
    if spec.startswith(SHARDS_PREFIX) and tags:
        raise CbirError("--tag needs --store milvus:URI")
    return open_store_searcher(args.index_dir, spec, tags=tags)


def cmd_shard(args: argparse.Namespace) -> int:
    """Split the index into shard files and print them."""
    from cbir.index.backends.shards import ShardedIndex
    from cbir.index.store import IndexStore

    if not args.shards and not args.ids_per_shard:
        raise CbirError("give --shards N or --ids-per-shard N")
    store = IndexStore.open(args.index_dir)
    try:
        sh = ShardedIndex.from_store(
            store,
            args.out,
            n_shards=args.shards,
            ids_per_shard=args.ids_per_shard,
            index_type=args.index_type,
        )
    finally:
        store.close()
    info = {
        "out": str(sh.root),
        "kind": sh.kind,
        "index_type": sh.index_type,
        "total": sh.ntotal,
        "shards": [s.__dict__ for s in sh.shards],
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"{sh.ntotal} vectors in {len(sh.shards)} shard(s) under {sh.root} ({sh.index_type})")
        for s in sh.shards:
            print(
                f"  {s.file}: {s.n} vectors, ids {s.lo if s.lo > -(2**62) else '-inf'}.."
                f"{s.hi if s.hi < 2**62 else 'inf'}"
            )
    return 0


def register(add: AddCommand) -> None:
    """Add ``cbir shard``."""
    sp = add(
        "shard",
        cmd_shard,
        "Split an index by id range into shard files searched together (exact merge).",
    )
    add_index_argument(sp)
    sp.add_argument(
        "--out", required=True, help="shard directory (shards.json + one faiss file per shard)"
    )
    sp.add_argument("--shards", type=int, default=None, help="number of shards (equal counts)")
    sp.add_argument("--ids-per-shard", type=int, default=None, help="or: vectors per shard")
    sp.add_argument(
        "--index-type", default=None, help="faiss index of each shard (default: the index's)"
    )
    sp.add_argument("--json", action="store_true", help="print the shards as JSON")

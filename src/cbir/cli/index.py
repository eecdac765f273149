"""``cbir index``: embed a folder of images into an index (incremental)."""

from __future__ import annotations

import argparse

from cbir.cli.common import AddCommand, print_json
from cbir.cli.shard import add_index_options


def cmd_index(args: argparse.Namespace) -> int:
    """Index ``images_dir`` into ``--index``; exit 1 when the folder holds no image."""
    from cbir.distributed.engine import engine_for
    from cbir.distributed.stores import sync_store
    from cbir.pipeline import index_folder

    with engine_for(
        args.engine, ray_address=args.ray_address, ray_workers=args.ray_workers
    ) as engine:
        summary = index_folder(
            args.images_dir,
            args.index,
            batch_size=args.batch_size,
            workers=args.workers,
            index_type=args.index_type,
            size=args.size,
            center=True if args.center else None,
            progress=False if args.json else None,
            model=args.model,
            engine=engine,
            backbone=args.backbone,
        )
    synced = sync_store(args.index, args.store)
    if args.json:
        print_json({**summary.to_dict(), **({"store": synced} if synced else {})})
    else:
        print("\n".join(summary.lines()))
        if synced:
            print(
                f"store {synced.pop('store')}: " + ", ".join(f"{k} {v}" for k, v in synced.items())
            )
    if summary.found == 0 and summary.total == 0:
        return 1
    return 0


def register(add: AddCommand) -> None:
    """Add ``cbir index``."""
    sp = add(
        "index",
        cmd_index,
        "Index a folder of images (incremental: only new or changed files are embedded).",
    )
    sp.add_argument("images_dir", help="folder of images (searched recursively)")
    sp.add_argument("--index", required=True, help="index directory (created if missing)")
    sp.add_argument("--batch-size", type=int, default=64)
    sp.add_argument("--workers", type=int, default=2, help="image decoding threads")
    sp.add_argument(
        "--index-type",
        default=None,
        help="faiss index_factory string (default Flat; e.g. HNSW32, IVF1024,PQ32)",
    )
    sp.add_argument(
        "--size", type=int, default=None, help="backbone input size in pixels (default 224)"
    )
    sp.add_argument(
        "--center", action="store_true", help="centre features by the collection mean before cosine"
    )
    sp.add_argument(
        "--model",
        default=None,
        metavar="RUN_DIR",
        help="a `cbir train` run: store its codes / embeddings",
    )
    sp.add_argument(
        "--backbone",
        default=None,
        metavar="NAME_OR_SPEC",
        help="the model of a new index: efficientnet-lite0 (default) or onnx:PATH.onnx"
        " (see docs/backbones.md); an existing index keeps its own",
    )
    sp.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_index_options(sp)  # --engine ray, --ray-address, --store milvus:URI

"""``cbir index``: embed a folder of images into an index (incremental)."""

from __future__ import annotations

import argparse

from cbir.cli.common import AddCommand, add_alias, add_index_argument, print_json
from cbir.cli.shard import add_index_options


def cmd_index(args: argparse.Namespace) -> int:
    """Index ``images_dir`` into ``--index``; exit 1 when the folder holds no image."""
    from cbir.backbones.pooling import Choice
    from cbir.distributed.engine import engine_for
    from cbir.distributed.stores import sync_store
    from cbir.errors import CbirError
    from cbir.pipeline import index_folder

    if args.whiten and args.model not in (None, "frozen"):
        raise CbirError("--whiten applies to the frozen backbone; drop it with --model")
    if args.refit_center and args.center is False:
        raise CbirError("--refit-center refits the centring mean; drop --no-center")
    with engine_for(
        args.engine, ray_address=args.ray_address, ray_workers=args.ray_workers
    ) as engine:
        summary = index_folder(
            args.images_dir,
            args.index,
            batch_size=args.batch_size,
            workers=args.decode_threads,
            index_type=args.index_type,
            size=args.size,
            center=args.center,
            progress=False if args.json else None,
            model=None if args.model == "frozen" else args.model,
            engine=engine,
            backbone=args.backbone,
            prune=args.prune,
            exclude=args.exclude,
            refit_center=args.refit_center,
            pooling=Choice(args.pooling, args.scales, args.flip, args.power, args.whiten),
            feature_dtype=args.feature_dtype,
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


def cmd_prune(args: argparse.Namespace) -> int:
    """Drop (or with ``--dry-run`` list) the rows whose files are gone."""
    from cbir.index.collection import prune_missing

    result = prune_missing(args.index_dir, dry_run=args.dry_run)
    if args.json:
        print_json(result.to_dict())
    else:
        print("\n".join(result.lines()))
    return 0


def register(add: AddCommand) -> None:
    """Add ``cbir index``."""
    sp = add(
        "index",
        cmd_index,
        "Index a folder of images (incremental: only new or changed files are embedded).",
    )
    sp.add_argument(
        "images_dir", metavar="IMAGES_DIR", help="folder of images (searched recursively)"
    )
    add_index_argument(sp, "index", "index directory (created if missing)")
    sp.add_argument("--batch-size", type=int, default=64, help="images per onnxruntime call")
    sp.add_argument(
        "--decode-threads", type=int, default=2, metavar="N", help="image decoding threads"
    )
    add_alias(sp, "--workers", "decode_threads", type=int)  # its name before issue 18
    sp.add_argument(
        "--index-type",
        default=None,
        help="faiss index_factory string (default Flat; e.g. HNSW32, IVF1024,PQ32)",
    )
    sp.add_argument(
        "--size", type=int, default=None, help="backbone input size in pixels (default 224)"
    )
    centring = sp.add_mutually_exclusive_group()
    centring.add_argument(
        "--center",
        dest="center",
        action="store_true",
        default=None,
        help="centre features on the collection mean before cosine (the default of a new index,"
        " except with an image-text backbone)",
    )
    centring.add_argument(
        "--no-center",
        dest="center",
        action="store_false",
        default=None,
        help="a new index without centring (plain cosine of the backbone features)",
    )
    sp.add_argument(
        "--feature-dtype",
        choices=("float32", "float16"),
        default=None,
        help="how a new index stores backbone features: float32, or float16 at half the disk"
        " and page cache (docs/scaling.md); an existing index keeps its own (default: float32)",
    )
    sp.add_argument(
        "--refit-center",
        action="store_true",
        help="fit the centring mean again on every image now indexed (after the collection"
        " has changed a lot; see `cbir info`); rebuilds the search index",
    )
    sp.add_argument(
        "--model",
        default=None,
        metavar="RUN_DIR",
        help="the model: a `cbir train` run (the index stores its codes / embeddings),"
        " or frozen for the backbone alone (default: frozen)",
    )
    sp.add_argument(
        "--backbone",
        default=None,
        metavar="NAME_OR_SPEC",
        help="the model of a new index: efficientnet-lite0 (default), efficientnet-lite0-int8,"
        " onnx:PATH.onnx, or an image-text model for --text: onnx-clip:DIR,"
        " open_clip:MODEL[:WEIGHTS] (also timm:MODEL[:CHECKPOINT]; see docs/backbones.md);"
        " an existing index keeps its own",
    )
    sp.add_argument(
        "--pooling",
        default=None,
        choices=("avg", "gem", "rmac"),
        help="retrieval pooling of a new index's feature map: avg (default), gem or rmac"
        " (R-MAC, PCA-whitened on the collection); see docs/backbones.md. An existing index"
        " keeps its own",
    )
    sp.add_argument(
        "--scales",
        default=None,
        metavar="multi|S,S,..",
        help="multi-scale inference of a new index: multi (1, 1/sqrt2, 1/2) or scales such"
        " as 1,0.5 (default 1)",
    )
    sp.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mirror invariance for a new index: each image's descriptor is the mean of those"
        " of the image and its horizontal mirror (twice the embedding work; default off)",
    )
    sp.add_argument(
        "--power",
        default=None,
        metavar="P",
        help="power normalisation of a new index's pooled descriptors: sign(x)|x|^P, then"
        " L2 (0.5: the signed square root; default 1: none)",
    )
    sp.add_argument(
        "--whiten",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="PCA-whiten a new index's features, learned on the collection (default: only"
        " with --pooling rmac, as Tolias et al.); docs/backbones.md measures both",
    )
    sp.add_argument(
        "--prune",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="drop the rows whose files are gone (or match --exclude) under every folder"
        " indexed into INDEX so far that is still there (one gone whole may be an unmounted"
        " disk: kept); without either flag only under IMAGES_DIR; --no-prune keeps them all"
        " (`cbir prune INDEX` drops files gone anywhere)",
    )
    sp.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="do not index files whose path under IMAGES_DIR, or any folder or file name"
        " on it, matches GLOB (repeatable; e.g. '*.png', '.thumbnails', 'raw/*')",
    )
    sp.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_index_options(sp)  # --engine ray, --ray-address, --store milvus:URI

    sp = add(
        "prune",
        cmd_prune,
        "Drop the rows of an index whose files are gone, wherever they were"
        " (the index's own uploads are kept).",
    )
    add_index_argument(sp)
    sp.add_argument(
        "--dry-run", action="store_true", help="list the files that are gone; change nothing"
    )
    sp.add_argument("--json", action="store_true", help="print the files and the counts as JSON")

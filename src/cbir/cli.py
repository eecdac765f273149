"""The ``cbir`` command line: thin, each subcommand one pipeline stage.

Errors a user can act on print one line (``cbir: error: ...``) and exit 1; never a
traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from cbir.errors import CbirError


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n}"


# ------------------------------------------------------------------ commands
def cmd_index(args: argparse.Namespace) -> int:
    from cbir.distributed import cli as dist
    from cbir.pipeline import index_folder

    with dist.engine_for(args) as engine:
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
    synced = dist.sync_store(args.index, args.store)
    if args.json:
        _print_json({**summary.to_dict(), **({"store": synced} if synced else {})})
    else:
        print("\n".join(summary.lines()))
        if synced:
            print(
                f"store {synced.pop('store')}: " + ", ".join(f"{k} {v}" for k, v in synced.items())
            )
    if summary.found == 0 and summary.total == 0:
        return 1
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from cbir.distributed.cli import open_searcher
    from cbir.search.searcher import Searcher

    text, where = getattr(args, "text", None), getattr(args, "where", None)
    if (text is None) == (args.query is None):
        raise CbirError("give one of QUERY (an image file, a folder or id:N) or --text TEXT")
    searcher = open_searcher(args)
    if searcher is not None and (text is not None or where is not None):
        searcher.close()
        raise CbirError("--text and --where search the index's own store; drop --store")
    from cbir.search.rerank import rerank_from_args

    rerank = rerank_from_args(args)
    if rerank is not None and (searcher is not None or text is not None or where is not None):
        if searcher is not None:
            searcher.close()
        raise CbirError(
            "--rerank re-ranks image queries on the index itself; drop --store, --text and --where"
        )
    searcher = searcher or Searcher(args.index_dir, rerank=rerank)
    try:
        if text is not None:
            results = [(text, searcher.search_text(text, args.k, where, args.text_mode))]
        elif where is not None:
            results = searcher.search_query(args.query, args.k, where=where)
        else:
            results = searcher.search_query(args.query, args.k)
    finally:
        searcher.close()
    ok = [(q, r) for q, r in results if not isinstance(r, Exception)]
    errors = [(q, r) for q, r in results if isinstance(r, Exception)]
    if args.json:
        out = [{"query": q, "results": [h.to_dict() for h in hits]} for q, hits in ok]
        out += [{"query": q, "error": str(e), "reason": e.reason} for q, e in errors]
        _print_json(out[0] if len(out) == 1 else out)
    else:
        for q, hits in ok:
            print(f"query: {q}")
            for h in hits:
                print(f"  {h.rank:>3}  {h.score:.4f}  {h.path}")
        for _q, e in errors:
            print(f"cbir: error: {_one_line(str(e))}", file=sys.stderr)
    if args.html:
        from cbir.search.html import write_html

        write_html(args.html, ok, title=f"cbir: {args.query if text is None else text}")
        if not args.json:
            print(f"wrote {args.html}")
    return 1 if errors and not ok else 0


def cmd_info(args: argparse.Namespace) -> int:
    from cbir.index.store import IndexStore

    store = IndexStore.open(args.index_dir)
    try:
        cfg = store.config
        tr = store.get_meta("transform") or {}
        fa = store.get_meta("faiss") or {}
        info = {
            "index": str(store.root),
            "count": store.count(),
            "dimension": tr.get("dim", cfg["feature_dim"]),
            "kind": cfg.get("kind", "float"),
            "backbone": cfg["backbone"],
            "model": {k: v for k, v in tr.items() if k != "mean"},
            "index_type": cfg["index_type"],
            "generation": store.generation,
            "index_file": fa.get("file"),
            "size_on_disk": store.size_on_disk(),
            "metadata": _metadata_info(store),
        }
    finally:
        store.close()
    if args.json:
        _print_json(info)
    else:
        bb = info["backbone"]
        print(f"index:        {info['index']}")
        print(f"count:        {info['count']}")
        print(f"dimension:    {info['dimension']} ({info['kind']})")
        print(
            f"backbone:     {bb['backbone']} (weights {bb.get('weights') or bb.get('sha256', '?')[:12]}, {bb['preprocess']['size']} px, {bb['preprocess']['mode']})"
        )
        print(
            f"model:        {info['model'].get('kind')}"
            + (" (centred)" if info["model"].get("center") else "")
        )
        print(f"index type:   {info['index_type']}")
        print(f"size on disk: {_human_bytes(info['size_on_disk'])}")
        md = info["metadata"]
        print(
            f"metadata:     {md['images']} image(s) with text"
            + (f"; fields: {', '.join(md['fields'])}" if md["fields"] else "")
        )
    return 0


def _metadata_info(store: Any) -> dict[str, Any]:
    """Images with searchable text (sidecar, EXIF, tags) and the metadata field names."""
    from cbir.index import metadata

    if not metadata.has_tables(store.conn):
        return {"images": 0, "fields": []}
    n = store.conn.execute("SELECT COUNT(*) FROM image_text").fetchone()[0]
    return {"images": int(n), "fields": metadata.known_fields(store.conn)}


def cmd_datasets(args: argparse.Namespace) -> int:
    from cbir.data.registry import layouts

    rows = []
    for lay in layouts():
        roots = [str(r) for r in lay.roots()]
        found = next((r for r in roots if os.path.exists(r)), None)
        rows.append(
            {"name": lay.name, "description": lay.description, "looks_in": roots, "found": found}
        )
    if args.json:
        _print_json(rows)
    else:
        for r in rows:
            status = f"found at {r['found']}" if r["found"] else "not found"
            print(f"{r['name']:<16} {r['description']}")
            print(f"{'':<16} looks in: {', '.join(r['looks_in']) or '(give a path)'} [{status}]")
        print(
            "Any directory in one of these layouts can be passed by path; set CBIR_DATA to add a root."
        )
    return 0


# -------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from cbir.distributed import cli as dist_cli

    p = argparse.ArgumentParser(
        prog="cbir", description="Content-based image retrieval on one CPU machine."
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, func: Callable[[argparse.Namespace], int], help_: str
    ) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(func=func)
        return sp

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
    dist_cli.add_index_options(sp)  # --engine ray, --ray-address, --store milvus:URI

    sp = add(
        "search", cmd_search, "Search an index by image file, folder of images, id:N, or --text."
    )
    sp.add_argument("index_dir")
    sp.add_argument(
        "query", nargs="?", default=None, help="an image file, a folder of query images, or id:N"
    )
    sp.add_argument(
        "--text",
        default=None,
        metavar="TEXT",
        help="a text query instead of QUERY (see --text-mode)",
    )
    sp.add_argument("--text-mode", choices=("auto", "metadata", "classes", "joint"), default="auto",
                    help="metadata: FTS5 over sidecar/EXIF fields and tags; classes: ImageNet class"
                    " keywords via MiniLM; joint: the index's VSE++ model; auto: metadata, then"
                    " joint or classes")  # fmt: skip
    sp.add_argument("--where", default=None, metavar="FILTER",
                    help="only images passing FILTER, e.g. \"year < 1900 and artist contains 'gogh'\""
                    " (fields: id, path, name, width, height, size, tags, added, metadata fields)")  # fmt: skip
    sp.add_argument("-k", type=int, default=10, help="results per query")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--html", default=None, metavar="OUT.html", help="write a page of thumbnails")
    dist_cli.add_search_options(sp)  # --store milvus:URI / shards:DIR, --tag
    from cbir.search.rerank import add_rerank_arguments

    add_rerank_arguments(sp)  # --rerank qe|alpha-qe|kreciprocal and its parameters

    sp = add(
        "info", cmd_info, "Show an index: count, dimension, backbone, index type, size on disk."
    )
    sp.add_argument("index_dir")
    sp.add_argument("--json", action="store_true")

    sp = add(
        "datasets", cmd_datasets, "List the dataset layouts cbir reads and where it looks for them."
    )
    sp.add_argument("--json", action="store_true")

    # Further subcommands live next to their stage: each module has
    # ``register(add)`` where ``add(name, func, help) -> ArgumentParser``.
    import importlib

    for mod in PLUGINS:
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if not (e.name and mod.startswith(e.name)):
                raise
            continue
        module.register(add)
    return p


#: Modules that add subcommands (evaluate, train, serve, check, ...), in help order.
PLUGINS = (
    "cbir.eval.cli",
    "cbir.train.cli",
    "cbir.search.joint_cli",
    "cbir.service.cli",
    "cbir.distributed.cli",
    "cbir.reliability.cli",
)


def _one_line(text: str) -> str:
    """``text`` on one line (a path may hold a newline)."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def main(argv: Sequence[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # file names that are not UTF-8 print escaped
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CbirError as e:
        print(f"cbir: error: {_one_line(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cbir: interrupted; everything committed so far is kept", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())

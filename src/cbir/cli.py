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
    from cbir.pipeline import index_folder

    summary = index_folder(
        args.images_dir,
        args.index,
        batch_size=args.batch_size,
        workers=args.workers,
        index_type=args.index_type,
        size=args.size,
        center=True if args.center else None,
        progress=False if args.json else None,
    )
    if args.json:
        _print_json(summary.to_dict())
    else:
        print("\n".join(summary.lines()))
    if summary.found == 0 and summary.total == 0:
        return 1
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from cbir.search.searcher import Searcher

    searcher = Searcher(args.index_dir)
    try:
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
            print(f"cbir: error: {e}", file=sys.stderr)
    if args.html:
        from cbir.search.html import write_html

        write_html(args.html, ok, title=f"cbir: {args.query}")
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
        print(f"backbone:     {bb['backbone']} (weights {bb['weights']}, {bb['preprocess']['size']} px, {bb['preprocess']['mode']})")
        print(f"model:        {info['model'].get('kind')}" + (" (centred)" if info["model"].get("center") else ""))
        print(f"index type:   {info['index_type']}")
        print(f"size on disk: {_human_bytes(info['size_on_disk'])}")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from cbir.data.registry import layouts

    rows = []
    for lay in layouts():
        roots = [str(r) for r in lay.roots()]
        found = next((r for r in roots if os.path.exists(r)), None)
        rows.append({"name": lay.name, "description": lay.description, "looks_in": roots, "found": found})
    if args.json:
        _print_json(rows)
    else:
        for r in rows:
            status = f"found at {r['found']}" if r["found"] else "not found"
            print(f"{r['name']:<16} {r['description']}")
            print(f"{'':<16} looks in: {', '.join(r['looks_in']) or '(give a path)'} [{status}]")
        print("Any directory in one of these layouts can be passed by path; set CBIR_DATA to add a root.")
    return 0


# -------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cbir", description="Content-based image retrieval on one CPU machine.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(func=func)
        return sp

    sp = add("index", cmd_index, "Index a folder of images (incremental: only new or changed files are embedded).")
    sp.add_argument("images_dir", help="folder of images (searched recursively)")
    sp.add_argument("--index", required=True, help="index directory (created if missing)")
    sp.add_argument("--batch-size", type=int, default=64)
    sp.add_argument("--workers", type=int, default=2, help="image decoding threads")
    sp.add_argument("--index-type", default=None, help="faiss index_factory string (default Flat; e.g. HNSW32, IVF1024,PQ32)")
    sp.add_argument("--size", type=int, default=None, help="backbone input size in pixels (default 224)")
    sp.add_argument("--center", action="store_true", help="centre features by the collection mean before cosine")
    sp.add_argument("--json", action="store_true", help="print the summary as JSON")

    sp = add("search", cmd_search, "Search an index by image file, folder of images, or id:N.")
    sp.add_argument("index_dir")
    sp.add_argument("query", help="an image file, a folder of query images, or id:N")
    sp.add_argument("-k", type=int, default=10, help="results per query")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--html", default=None, metavar="OUT.html", help="write a page of thumbnails")

    sp = add("info", cmd_info, "Show an index: count, dimension, backbone, index type, size on disk.")
    sp.add_argument("index_dir")
    sp.add_argument("--json", action="store_true")

    sp = add("datasets", cmd_datasets, "List the dataset layouts cbir reads and where it looks for them.")
    sp.add_argument("--json", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CbirError as e:
        print(f"cbir: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cbir: interrupted; everything committed so far is kept", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())

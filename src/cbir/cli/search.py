"""``cbir search``: search an index by image file, folder, ``id:N``, ``--text`` or ``--sketch``."""

from __future__ import annotations

import argparse
import sys

from cbir.cli.common import AddCommand, add_index_argument, one_line, print_json
from cbir.cli.rerank import add_rerank_arguments, rerank_from_args
from cbir.cli.shard import add_search_options, open_searcher
from cbir.errors import CbirError


def cmd_search(args: argparse.Namespace) -> int:
    """Print the results of each query; exit 1 when every query failed."""
    from cbir.search.searcher import Searcher

    text, where = args.text, args.where
    if args.sketch is not None:
        return _sketch(args)
    if args.model is not None:
        raise CbirError("--model is the sketch model of --sketch DRAWING; give --sketch too")
    if (text is None) == (args.query is None):
        raise CbirError(
            "give one of QUERY (an image file, a folder or id:N), --text TEXT or --sketch DRAWING"
        )
    searcher = open_searcher(args)
    if searcher is not None and (text is not None or where is not None):
        searcher.close()
        raise CbirError("--text and --where search the index's own store; drop --store")
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
        hint = None
        if text is not None and not results[0][1]:  # say why, and what to try (exit 0)
            from cbir.search.text import why_no_hits

            hint = why_no_hits(searcher, text, args.text_mode, where)
    finally:
        searcher.close()
    ok = [(q, r) for q, r in results if not isinstance(r, Exception)]
    errors = [(q, r) for q, r in results if isinstance(r, Exception)]
    if hint is not None:
        print(f"cbir: nothing found: {hint}", file=sys.stderr)
    if args.json:
        out = [{"query": q, "results": [h.to_dict() for h in hits]} for q, hits in ok]
        if hint is not None:
            out[0]["hint"] = hint
        out += [{"query": q, "error": str(e), "reason": e.reason} for q, e in errors]
        print_json(out[0] if len(out) == 1 else out)
    else:
        for q, hits in ok:
            print(f"query: {q}")
            for h in hits:
                print(f"  {h.rank:>3}  {h.score:.4f}  {h.path}")
        for _q, e in errors:
            print(f"cbir: error: {one_line(str(e))}", file=sys.stderr)
    if args.html:
        from cbir.search.html import write_html

        write_html(args.html, ok, title=f"cbir: {args.query if text is None else text}")
        if not args.json:
            print(f"wrote {args.html}")
    return 1 if errors and not ok else 0


def _sketch(args: argparse.Namespace) -> int:
    """``--sketch DRAWING --model RUN_DIR``: search by a drawing (cbir.search.sketch)."""
    from cbir.search.searcher import Searcher
    from cbir.search.sketch import sketch_search

    if args.query is not None or args.text is not None:
        raise CbirError("--sketch DRAWING is the query; drop QUERY and --text")
    if args.model is None:
        raise CbirError(
            "--sketch needs the sketch model: --model RUN_DIR (a `cbir train --method sketch` run)"
        )
    if args.store or args.rerank or args.html:
        raise CbirError("--sketch searches the index itself; drop --store, --rerank and --html")
    searcher = Searcher(args.index_dir)
    try:
        hits = sketch_search(searcher, args.model, args.sketch, args.k, args.where)
    finally:
        searcher.close()
    if args.json:
        print_json({"query": args.sketch, "results": [h.to_dict() for h in hits]})
    else:
        print(f"sketch: {args.sketch}")
        for h in hits:
            print(f"  {h.rank:>3}  {h.score:.4f}  {h.path}")
    return 0


def register(add: AddCommand) -> None:
    """Add ``cbir search``."""
    sp = add(
        "search", cmd_search, "Search an index by image file, folder of images, id:N, or --text."
    )
    add_index_argument(sp, shift="query")
    sp.add_argument(
        "query", nargs="?", default=None, help="an image file, a folder of query images, or id:N"
    )
    sp.add_argument(
        "--text",
        default=None,
        metavar="TEXT",
        help="a text query instead of QUERY (see --text-mode)",
    )
    sp.add_argument(
        "--text-mode",
        choices=("auto", "metadata", "classes", "joint", "backbone"),
        default="auto",
        help="metadata: FTS5 over sidecar/EXIF fields and tags; classes: ImageNet class"
        " keywords via MiniLM; joint: the index's VSE++ model; backbone: the index's"
        " image-text backbone (onnx-clip:, open_clip:) embeds the text; auto: metadata, then"
        " backbone, joint or classes, whichever the index has (a search that finds nothing"
        " says why on stderr and exits 0)",
    )
    sp.add_argument(
        "--where",
        default=None,
        metavar="FILTER",
        help="only images passing FILTER, e.g. \"year < 1900 and artist contains 'gogh'\""
        " (fields: id, path, name, width, height, size, tags, added, metadata fields)",
    )
    sp.add_argument(
        "--sketch",
        default=None,
        metavar="DRAWING",
        help="a drawing (dark strokes on light, PNG or JPEG) instead of QUERY; needs --model",
    )
    sp.add_argument(
        "--model",
        default=None,
        metavar="RUN_DIR",
        help="the sketch model of --sketch: a `cbir train --method sketch` run",
    )
    sp.add_argument("-k", type=int, default=10, help="results per query")
    sp.add_argument("--json", action="store_true", help="print each query and its results as JSON")
    sp.add_argument("--html", default=None, metavar="OUT.html", help="write a page of thumbnails")
    add_search_options(sp)  # --store milvus:URI / shards:DIR, --tag
    add_rerank_arguments(sp)  # --rerank qe|alpha-qe|kreciprocal and its parameters

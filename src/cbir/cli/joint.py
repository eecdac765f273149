"""``cbir describe``: image-to-text with a joint image-text model (VSE++): rank captions."""

from __future__ import annotations

import argparse
import json

from cbir.cli.common import AddCommand
from cbir.errors import CbirError


def cmd_describe(args: argparse.Namespace) -> int:
    """Print the captions ranked for the image."""
    from cbir.search.joint import image_to_text

    captions: list[str] = list(args.caption or [])
    if args.captions:
        from cbir.data.captions import read_captions

        captions += [c.caption for c in read_captions(args.captions).captions]
    captions = list(dict.fromkeys(captions))  # each distinct caption once, in file order
    if not captions:
        raise CbirError("give the captions to rank: --captions FILE and/or --caption TEXT")
    if (args.model is None) == (args.index is None):
        raise CbirError("give the joint model: --model RUN_DIR (a vsepp run) or --index INDEX")
    hits = image_to_text(args.model or args.index, args.image, captions, k=args.k)
    if args.json:
        print(json.dumps({"image": args.image, "hits": [h.to_dict() for h in hits]}, indent=2))
    else:
        for h in hits:
            print(f"{h.rank:3d}  {h.score:.4f}  {h.caption}")
    return 0


def register(add: AddCommand) -> None:
    """Add ``cbir describe``."""
    sp = add(
        "describe",
        cmd_describe,
        "Rank captions for an image with a joint image-text model (cbir train --method vsepp).",
    )
    sp.add_argument("image", help="an image file, or id:N of the index given as --index")
    sp.add_argument(
        "--model", default=None, metavar="RUN_DIR", help="the joint model: a vsepp / vse0 run"
    )
    sp.add_argument(
        "--index",
        default=None,
        metavar="INDEX",
        help="or: an index built with a vsepp / vse0 run (its model; id:N images)",
    )
    sp.add_argument(
        "--captions",
        default=None,
        metavar="FILE",
        help="caption file (COCO, Flickr30k, Karpathy, CSV/JSON)",
    )
    sp.add_argument(
        "--caption",
        action="append",
        default=[],
        metavar="TEXT",
        help="a caption to rank (repeatable)",
    )
    sp.add_argument("-k", type=int, default=5, help="captions to show")
    sp.add_argument("--json", action="store_true", help="print the ranked captions as JSON")

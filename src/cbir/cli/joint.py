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
    hits = image_to_text(args.model, args.image, captions, k=args.k)
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
    sp.add_argument("image", help="an image file, or id:N of the index given as --model")
    sp.add_argument(
        "--model",
        required=True,
        metavar="RUN_DIR|INDEX_DIR",
        help="a vsepp run, or an index built with one",
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
    sp.add_argument("--json", action="store_true")

"""Caption files: (image, caption) pairs for a joint image-text space (VSE++).

Readers for the layouts real users have, detected by content:

- COCO captions (``captions_train2017.json``): ``{"images": [{"id", "file_name"}, ...],
  "annotations": [{"image_id", "caption"}, ...]}`` (Chen et al., "Microsoft COCO
  Captions", 2015).
- Flickr30k ``results.csv``: ``image_name| comment_number| comment`` lines (Young et al.,
  TACL 2014), including the one known line of the public file whose last separator is
  missing.
- The Karpathy splits (``dataset_flickr30k.json``, ``dataset_coco.json``): ``{"images":
  [{"filename", "filepath"?, "split", "sentences": [{"raw"}, ...]}, ...]}``, whose
  ``split`` (train / restval / val / test) is kept (Karpathy & Fei-Fei, CVPR 2015).
- A simple CSV (header row) or JSON list of objects with a ``caption`` (or ``text``)
  field and either ``path`` (or ``image``, ``file_name``, ``filename``) naming an image
  file, or ``class`` (or ``label``) naming a class, in which case the caption describes
  every image of that class (the Fashion-MNIST benchmark). An optional ``split`` field
  (``train`` / ``test`` / ``val``) fixes the held-out pairs.

:func:`fashion_mnist_captions` writes several varied captions per Fashion-MNIST class from
templates x synonyms, with held-out templates and synonyms for the test captions.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cbir.errors import CbirError
from cbir.utils import atomic_write_json

IMAGE_KEYS = ("path", "image", "file_name", "filename", "image_name", "file")
CLASS_KEYS = ("class", "label", "class_name")
CAPTION_KEYS = ("caption", "text", "comment", "sentence")
TRAIN_SPLITS = ("train", "restval")
TEST_SPLITS = ("test",)


@dataclass(frozen=True)
class Caption:
    """One caption: of an image file (``image``) or of every image of a class (``label``).

    ``split``: "train", "test", "val", "restval", or None when the file says nothing.
    """

    caption: str
    image: str | None = None
    label: str | None = None
    split: str | None = None


@dataclass
class CaptionSet:
    """The captions of one file and its layout ("coco", "flickr30k", "karpathy", "csv", "json")."""

    captions: list[Caption]
    layout: str
    path: str

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def by_class(self) -> bool:
        """True when the captions describe classes, not image files."""
        return bool(self.captions) and self.captions[0].label is not None

    @property
    def has_splits(self) -> bool:
        return any(c.split is not None for c in self.captions)


def read_captions(path: str | os.PathLike[str]) -> CaptionSet:
    """Read a caption file in any layout of the module doc (detected from its content)."""
    p = Path(path)
    if not p.is_file():
        raise CbirError(f"{p}: no such caption file")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise CbirError(
            f"{p}: cannot read the caption file ({e}); give a UTF-8 JSON or CSV file"
        ) from None
    head = text.lstrip()[:1]
    if head in ("{", "["):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise CbirError(f"{p}: not valid JSON ({e})") from None
        out = _from_json(obj, p)
    elif _is_flickr_results(text):
        out = CaptionSet(_flickr_results(text, p), "flickr30k", str(p))
    else:
        out = CaptionSet(
            _simple_rows(list(csv.DictReader(io.StringIO(text))), p, "csv"), "csv", str(p)
        )
    if not out.captions:
        raise CbirError(f"{p}: no captions found")
    return out


# ------------------------------------------------------------------ layouts
def _from_json(obj: Any, p: Path) -> CaptionSet:
    if isinstance(obj, dict) and "annotations" in obj and "images" in obj:
        return CaptionSet(_coco(obj, p), "coco", str(p))
    if (
        isinstance(obj, dict)
        and isinstance(obj.get("images"), list)
        and obj["images"]
        and "sentences" in obj["images"][0]
    ):
        return CaptionSet(_karpathy(obj, p), "karpathy", str(p))
    if isinstance(obj, dict) and isinstance(obj.get("captions"), list):
        obj = obj["captions"]
    if isinstance(obj, list):
        return CaptionSet(_simple_rows(obj, p, "json"), "json", str(p))
    raise CbirError(
        f"{p}: unknown caption layout; expected COCO captions (images + annotations), the"
        " Karpathy split JSON (images with sentences), or a list of {path|class, caption}"
    )


def _coco(obj: dict[str, Any], p: Path) -> list[Caption]:
    try:
        files = {int(im["id"]): str(im["file_name"]) for im in obj["images"]}
    except (KeyError, TypeError, ValueError) as e:
        raise CbirError(f"{p}: COCO 'images' entries need 'id' and 'file_name' ({e!r})") from None
    out = []
    for i, ann in enumerate(obj["annotations"]):
        try:
            image_id, caption = int(ann["image_id"]), str(ann["caption"])
        except (KeyError, TypeError, ValueError):
            raise CbirError(f"{p}: annotation {i} needs 'image_id' and 'caption'") from None
        if image_id not in files:
            raise CbirError(
                f"{p}: annotation {i} names image_id {image_id}, which is not in 'images'"
            )
        out.append(Caption(_clean(caption), image=files[image_id]))
    return out


def _karpathy(obj: dict[str, Any], p: Path) -> list[Caption]:
    out = []
    for i, im in enumerate(obj["images"]):
        try:
            name = str(im["filename"])
            sents = im["sentences"]
        except (KeyError, TypeError):
            raise CbirError(f"{p}: image {i} needs 'filename' and 'sentences'") from None
        if im.get("filepath"):
            name = f"{im['filepath']}/{name}"
        split = im.get("split")
        for s in sents:
            raw = s.get("raw") if isinstance(s, dict) else s
            if raw is None and isinstance(s, dict) and "tokens" in s:
                raw = " ".join(s["tokens"])
            if raw:
                out.append(
                    Caption(
                        _clean(str(raw)), image=name, split=None if split is None else str(split)
                    )
                )
    return out


def _is_flickr_results(text: str) -> bool:
    first = text.lstrip().split("\n", 1)[0]
    return first.replace(" ", "").lower().startswith("image_name|")


def _flickr_results(text: str, p: Path) -> list[Caption]:
    out = []
    for n, line in enumerate(text.splitlines()[1:], start=2):
        if not line.strip():
            continue
        parts = [s.strip() for s in line.split("|", 2)]
        if len(parts) == 2:  # "name| 4   A dog runs ..." (a missing separator in the public file)
            num, _, rest = parts[1].partition(" ")
            parts = [parts[0], num, rest.strip()] if num.isdigit() else parts
        if len(parts) != 3 or not parts[0] or not parts[2]:
            raise CbirError(
                f"{p}:{n}: expected 'image_name| comment_number| comment', got {line[:80]!r}"
            )
        out.append(Caption(_clean(parts[2]), image=parts[0]))
    return out


def _pick(row: dict[str, Any], keys: Sequence[str]) -> Any:
    low = {str(k).strip().lower(): v for k, v in row.items() if k is not None}
    for k in keys:
        if low.get(k) not in (None, ""):
            return low[k]
    return None


def _simple_rows(rows: list[Any], p: Path, layout: str) -> list[Caption]:
    out = []
    for n, row in enumerate(rows, start=2 if layout == "csv" else 0):
        where = f"{p}:{n}" if layout == "csv" else f"{p}: entry {n}"
        if not isinstance(row, dict):
            raise CbirError(f"{where}: expected an object with path (or class) and caption")
        cap, image, label = _pick(row, CAPTION_KEYS), _pick(row, IMAGE_KEYS), _pick(row, CLASS_KEYS)
        split = _pick(row, ("split",))
        if cap is None or (image is None) == (label is None):
            raise CbirError(
                f"{where}: each caption needs a 'caption' and exactly one of 'path' (an image"
                " file) or 'class' (every image of that class); CSV files need a header row"
            )
        out.append(Caption(
            _clean(str(cap)), image=None if image is None else str(image),
            label=None if label is None else str(label), split=None if split is None else str(split).lower(),
        ))  # fmt: skip
    kinds = {c.label is None for c in out}
    if len(kinds) > 1:
        raise CbirError(f"{p}: mixes captions of image files and of classes; use one kind per file")
    return out


def _clean(text: str) -> str:
    return " ".join(text.split())


def write_captions_json(path: str | os.PathLike[str], captions: Sequence[Caption]) -> Path:
    """Write captions as the simple JSON layout (atomically)."""
    rows = [{k: v for k, v in asdict(c).items() if v is not None} for c in captions]
    return atomic_write_json(Path(path), rows)


# ------------------------------------------------------------------ Fashion-MNIST captions
#: Synonyms per Fashion-MNIST class; the last two of each list are held out for testing.
FASHION_SYNONYMS: dict[str, list[str]] = {
    "T-shirt/top": ["t-shirt", "tee shirt", "short-sleeved top", "tank top", "crew-neck tee"],
    "Trouser": [
        "pair of trousers",
        "pair of pants",
        "pair of jeans",
        "pair of slacks",
        "pair of leggings",
    ],
    "Pullover": ["pullover", "sweater", "jumper", "knitted sweater", "long-sleeved sweatshirt"],
    "Dress": ["dress", "gown", "sundress", "frock", "long summer dress"],
    "Coat": ["coat", "jacket", "overcoat", "parka", "zip-up winter jacket"],
    "Sandal": ["sandal", "flip-flop", "open-toed shoe", "strappy sandal", "summer slipper"],
    "Shirt": ["shirt", "button-up shirt", "collared shirt", "blouse", "dress shirt with buttons"],
    "Sneaker": ["sneaker", "running shoe", "trainer", "athletic shoe", "canvas sports shoe"],
    "Bag": ["bag", "handbag", "purse", "tote bag", "leather satchel"],
    "Ankle boot": ["ankle boot", "boot", "chelsea boot", "bootie", "short heeled boot"],
}
#: Caption templates; the last ones are held out for testing.
FASHION_TEMPLATES = [
    "a photo of a {}",
    "a picture of a {}",
    "a grayscale image of a {}",
    "a {} on a black background",
    "a white {} on black",
    "a small low-resolution photo of a {}",
    "a product shot of a {}",
    "this is a {}",
    "an image showing a {}",
    "a close-up of a {}",
    # held out
    "a blurry thumbnail of a {} for sale",
    "someone's {}, photographed from above",
    "a catalogue picture with one {} in it",
]
FASHION_HELD_OUT_SYNONYMS = 2
FASHION_HELD_OUT_TEMPLATES = 3


def fashion_mnist_captions(
    held_out_synonyms: int = FASHION_HELD_OUT_SYNONYMS,
    held_out_templates: int = FASHION_HELD_OUT_TEMPLATES,
) -> list[Caption]:
    """Class captions for Fashion-MNIST: templates x synonyms, split by wording.

    Training captions use the first synonyms and templates; test captions combine only
    held-out synonyms with held-out templates, so no test caption shares its class word
    or its sentence frame with a training caption.
    """
    n_t = len(FASHION_TEMPLATES)
    out: list[Caption] = []
    for cls, words in FASHION_SYNONYMS.items():
        for wi, word in enumerate(words):
            test_word = wi >= len(words) - held_out_synonyms
            for ti, tpl in enumerate(FASHION_TEMPLATES):
                test_tpl = ti >= n_t - held_out_templates
                if test_word != test_tpl:
                    continue  # a mixed caption would leak seen wording into the test set
                out.append(
                    Caption(
                        _fix_articles(tpl.format(word)),
                        label=cls,
                        split="test" if test_word else "train",
                    )
                )
    return out


def _fix_articles(text: str) -> str:
    """'a ankle boot' -> 'an ankle boot' (the templates say 'a')."""
    words = text.split(" ")
    for i in range(len(words) - 1):
        if words[i] in ("a", "A") and words[i + 1][:1].lower() in "aeiou":
            words[i] = words[i] + "n"
    return " ".join(words)

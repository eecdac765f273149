"""Text-to-image and image-to-text search in a joint image-text space (VSE++, Faghri et
al., BMVC 2018; trained by ``cbir train --method vsepp``, :mod:`cbir.train.joint`).

An index built with ``cbir index IMAGES --index DIR --model RUN_DIR`` from a joint run
stores the image side's unit vectors; the copy of the checkpoint in the index carries the
text head too. :func:`text_search` embeds a query with all-MiniLM-L6-v2 and the text head
and searches the index by cosine similarity; :func:`image_to_text` ranks a list of
captions for an image. ``cbir search INDEX --text ... --text-mode joint`` calls
:func:`text_search` (:mod:`cbir.search.text`).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from cbir.errors import CbirError
from cbir.heads.learned import LearnedTransform
from cbir.search.hits import Hit
from cbir.search.joint_model import has_joint_model, joint_model
from cbir.search.searcher import Searcher

__all__ = [
    "CaptionHit",
    "has_joint_model",
    "image_to_text",
    "joint_model",
    "text_search",
]


@dataclass
class CaptionHit:
    """One ranked caption: its position in the caption list, text and cosine score."""

    rank: int
    index: int
    caption: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def text_search(index_dir: str | os.PathLike[str] | Searcher, text: str, k: int = 10) -> list[Hit]:
    """Top-``k`` images of the index for ``text``: MiniLM, the text head, cosine search."""
    text = (text or "").strip()
    if not text:
        raise CbirError("the text query is empty; give one or more words")
    own = not isinstance(index_dir, Searcher)
    searcher = Searcher(index_dir) if own else index_dir
    try:
        model = joint_model(searcher)
        return searcher.search_vectors(model.encode_text([text]), k)[0]
    finally:
        if own:
            searcher.close()


def _features(model: LearnedTransform, image: Any) -> np.ndarray:
    """Backbone features ``(1, 1280)`` of an image file, encoded bytes, or PIL image."""
    from PIL import Image

    from cbir.backbones.registry import open_backbone
    from cbir.data.images import decode, read_bytes

    pre = model.backbone["preprocess"]
    bb = open_backbone(size=pre["size"], mode=pre.get("mode", "crop"))
    if bb.fingerprint != model.backbone:
        raise CbirError("the model was trained on another backbone; retrain it with this cbir")
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="PNG")
        img = decode(buf.getvalue(), "<image>", draft_size=bb.preprocess.size)
    elif isinstance(image, bytes | bytearray):
        img = decode(bytes(image), "<upload>", draft_size=bb.preprocess.size)
    else:
        img = decode(read_bytes(image), str(image), draft_size=bb.preprocess.size)
    feats, _ = bb.run(bb.preprocess(img)[None])
    return feats


def image_to_text(
    run_or_index: str | os.PathLike[str] | Searcher,
    image: Any,
    captions: Sequence[str],
    k: int = 5,
) -> list[CaptionHit]:
    """The ``k`` captions of ``captions`` closest to ``image`` (a file, encoded bytes, a PIL
    image, or an ``id:N`` of the index) in the joint space."""
    if k < 1:
        raise CbirError("k must be at least 1")
    caps = [str(c) for c in captions]
    if not caps:
        raise CbirError("no captions to rank; give a caption file or a list of captions")
    model = joint_model(run_or_index)
    if isinstance(image, str) and image.startswith("id:"):
        feats = _stored_features(run_or_index, image)
    else:
        feats = _features(model, image)
    scores = model.text_vectors(_embed(caps)) @ model(feats)[0]
    order = np.lexsort((np.arange(len(caps)), -scores))[:k]  # ties: caption order
    return [
        CaptionHit(r + 1, int(i), caps[i], round(float(scores[i]), 6)) for r, i in enumerate(order)
    ]


def _embed(captions: list[str]) -> np.ndarray:
    from cbir.heads.vsepp import cached_text_embeddings, encode_texts

    # a caption list is embedded once and cached; a few ad-hoc captions are not worth it
    return cached_text_embeddings(captions) if len(captions) > 4 else encode_texts(captions)


def _stored_features(run_or_index: Any, query: str) -> np.ndarray:
    try:
        id_ = int(query[3:])
    except ValueError:
        raise CbirError(f"{query!r}: expected id:N with N a number") from None
    own = not isinstance(run_or_index, Searcher)
    if own:
        from cbir.index.store import IndexStore

        if not IndexStore.exists(run_or_index):
            raise CbirError(
                f"{run_or_index}: {query} names an indexed image; give the index built with the model"
            )
    searcher = Searcher(run_or_index) if own else run_or_index
    try:
        if searcher.store.row(id_) is None:
            raise CbirError(f"id:{id_} is not in {searcher.store.root}")
        return np.asarray(searcher.store.features([id_]), np.float32)
    finally:
        if own:
            searcher.close()

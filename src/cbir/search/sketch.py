"""Search an index by a drawing (after Liu et al., "Deep Sketch Hashing", CVPR 2017).

The drawing is brought to one form (:func:`cbir.data.sketch.normalise_drawing`), run
through the index's own backbone, and mapped by a sketch model
(:class:`cbir.heads.sketch.SketchModel`, ``cbir train --method sketch``) to predicted image
features; those go through the index's transform like an image query's features, so any
index of the same backbone answers, float or binary. ``cbir search INDEX --sketch FILE
--model RUN_DIR`` and ``POST /search/sketch`` of ``cbir serve --sketch-model RUN_DIR``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from cbir.data.images import decode, read_bytes
from cbir.data.sketch import DRAWING_SIZE, normalise_drawing
from cbir.heads.sketch import SketchModel
from cbir.search.hits import Hit


def open_sketch_model(model: str | os.PathLike[str] | SketchModel, store: Any) -> SketchModel:
    """The sketch model ``model`` (a run directory or sketch.npz), checked against the
    backbone of ``store`` (an open :class:`~cbir.index.store.IndexStore`)."""
    m = model if isinstance(model, SketchModel) else SketchModel.from_path(model)
    m.check_backbone(store.config["backbone"], str(store.root))
    return m


def drawing_features(backbone: Any, data: bytes, name: str = "<drawing>") -> np.ndarray:
    """Backbone features ``(1, dim)`` of an encoded drawing (ImageError if not an image;
    CbirError if it has no strokes)."""
    img = normalise_drawing(decode(data, name, reduce_to=DRAWING_SIZE))
    feats, _ = backbone.run(backbone.preprocess(img)[None])
    return np.asarray(feats, np.float32)


def sketch_search(
    searcher: Any,
    model: str | os.PathLike[str] | SketchModel,
    drawing: str | os.PathLike[str] | bytes,
    k: int = 10,
    where: Any = None,
) -> list[Hit]:
    """Top-``k`` images of the searcher's index for ``drawing`` (a file or its bytes)."""
    m = open_sketch_model(model, searcher.store)
    if isinstance(drawing, bytes | bytearray):
        data, name = bytes(drawing), "<drawing>"
    else:
        data, name = read_bytes(drawing), str(drawing)
    feats = drawing_features(searcher.backbone, data, name)
    return searcher.search_features(m(feats), k, where)[0]

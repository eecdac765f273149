"""Sketch-like drawings made from images, and drawings brought to one form.

Training pairs for sketch queries (after Liu et al., "Deep Sketch Hashing: Fast Free-hand
Sketch-Based Image Retrieval", CVPR 2017): each image's Canny edge map (scikit-image),
jittered by a small random affine warp, broken in a few places, and thickened into black
strokes on white, as a person draws with a pen. Every random choice comes from the seed,
so the same image and seed give the same drawing.

:func:`normalise_drawing` brings both these edge maps and a person's drawing (a canvas PNG
with a transparent background, a scan, white-on-black) to one form: dark strokes on white,
cropped to the ink with a margin, centred on a square. It needs only Pillow and numpy, so a
search by drawing runs on the base install; :func:`edge_sketch` needs scikit-image (the
``train`` extra).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from cbir.data.base import ImageSet
from cbir.errors import CbirError

#: Bump when the drawings change (it keys the feature cache of sketch sets).
SKETCH_VERSION = 1
#: Side of the square a normalised drawing is drawn on.
DRAWING_SIZE = 112
#: Fraction of the ink's box added on each side when cropping.
MARGIN = 0.08


@dataclass(frozen=True)
class SketchStyle:
    """How :func:`edge_sketch` draws (recorded in a sketch model).

    Args:
        size: the image's longer side before edge detection, in pixels.
        sigma: Canny's Gaussian width, in pixels at ``size``.
        thickness: stroke radius added by dilation, in pixels at ``size``.
        rotate: largest rotation of the jitter, in degrees.
        scale: largest relative change of scale of the jitter.
        shift: largest shift of the jitter, as a fraction of ``size``.
        breaks: square gaps cut into the strokes (their side is ``size / 10``).
    """

    size: int = DRAWING_SIZE
    sigma: float = 2.0
    thickness: int = 1
    rotate: float = 6.0
    scale: float = 0.08
    shift: float = 0.04
    breaks: int = 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ink(gray: np.ndarray) -> np.ndarray:
    """The ink mask of a grey image (``True`` where drawn): dark strokes on light paper,
    or light strokes on dark paper (then the background, the median, is dark)."""
    if np.median(gray) < 128:
        return gray > 127
    return gray < 128


def normalise_drawing(img: Image.Image, size: int = DRAWING_SIZE) -> Image.Image:
    """A drawing as black strokes on white, cropped to its ink plus a margin, centred on
    a ``size`` square (RGB). Transparent pixels count as paper. An empty drawing is a
    :class:`CbirError`."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(paper, rgba)
    gray = np.asarray(img.convert("L"), dtype=np.uint8)
    ink = _ink(gray)
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    if len(rows) == 0:
        raise CbirError("the drawing is empty: draw some strokes (dark on light) and search again")
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    crop = ink[top:bottom, left:right]
    h, w = crop.shape
    side = int(np.ceil(max(h, w) * (1 + 2 * MARGIN))) + 1
    canvas = np.zeros((side, side), bool)
    y0, x0 = (side - h) // 2, (side - w) // 2
    canvas[y0 : y0 + h, x0 : x0 + w] = crop
    out = Image.fromarray(np.where(canvas, 0, 255).astype(np.uint8))
    out = out.resize((size, size), Image.Resampling.BILINEAR)
    return out.convert("RGB")


def edge_sketch(
    img: Image.Image, seed: int | Sequence[int], style: SketchStyle = SketchStyle()
) -> Image.Image:
    """A drawing of ``img``: its Canny edges, jittered, broken and thickened (see the
    module doc), normalised by :func:`normalise_drawing`. Deterministic in ``seed``."""
    from scipy.ndimage import binary_dilation
    from skimage.feature import canny
    from skimage.morphology import disk
    from skimage.transform import AffineTransform, warp

    rng = np.random.default_rng(seed)
    g = img.convert("L")
    scale = style.size / max(g.size)
    g = g.resize(
        (max(1, round(g.width * scale)), max(1, round(g.height * scale))),
        Image.Resampling.BILINEAR,
    )
    a = np.asarray(g, dtype=np.float64) / 255.0
    edges = canny(a, sigma=style.sigma)
    if not edges.any():  # a flat image: its outline is the frame
        edges[[0, -1], :] = True
        edges[:, [0, -1]] = True
    h, w = edges.shape
    # jitter: rotate and scale about the centre, then shift
    centre = np.array([w / 2, h / 2])
    rot = np.deg2rad(rng.uniform(-style.rotate, style.rotate))
    s = 1 + rng.uniform(-style.scale, style.scale)
    shift = rng.uniform(-style.shift, style.shift, 2) * style.size
    t = (
        AffineTransform(translation=-centre)
        + AffineTransform(rotation=rot, scale=s)
        + AffineTransform(translation=centre + shift)
    )
    moved = warp(edges.astype(np.float64), t.inverse, order=0, mode="constant", cval=0) > 0.5
    if moved.any():
        edges = moved
    # breaks: a few square gaps in the strokes, centred on stroke pixels
    ys, xs = np.nonzero(edges)
    half = max(1, style.size // 20)
    for j in rng.choice(len(ys), min(style.breaks, len(ys)), replace=False):
        edges[max(0, ys[j] - half) : ys[j] + half, max(0, xs[j] - half) : xs[j] + half] = False
    if style.thickness > 0:
        edges = binary_dilation(edges, structure=disk(style.thickness).astype(bool))
    if not edges.any():
        edges[h // 2, w // 2] = True
    drawing = Image.fromarray(np.where(edges, 0, 255).astype(np.uint8))
    return normalise_drawing(drawing, style.size)


def sketch_set(images: ImageSet, seed: int = 0, style: SketchStyle = SketchStyle()) -> ImageSet:
    """The drawings of ``images`` (:func:`edge_sketch` of image ``i`` with seed
    ``(seed, i-th key's position in the root set)``), same labels; a new cache key."""
    root, idx = images.root()
    style_key = "-".join(f"{v}" for v in asdict(style).values())
    tag = f"sketch{SKETCH_VERSION}-s{seed}-{style_key}"

    def load(i: int) -> Image.Image:
        return edge_sketch(images.load(i), (seed, int(idx[i])), style)

    return ImageSet(
        name=f"{images.name}-{tag}",
        labels=images.labels,
        loader=load,
        keys=[f"{tag}:{k}" for k in images.keys],
        class_names=images.class_names,
    )

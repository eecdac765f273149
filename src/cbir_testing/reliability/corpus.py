"""Real images for the reliability trials: scikit-image's bundled photos and variants.

The variants (mirrors, crops, rotations, re-encodings) have distinct content, so each is
embedded on its own. Everything is deterministic: the same ``n`` gives the same files.
"""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

#: scikit-image's bundled photos (no download).
PHOTOS = (
    "astronaut",
    "camera",
    "chelsea",
    "coffee",
    "coins",
    "horse",
    "moon",
    "page",
    "rocket",
    "text",
    "immunohistochemistry",
    "hubble_deep_field",
    "logo",
)
#: Longest side of corpus images (small keeps the trials quick; they are still photos).
MAX_SIDE = 256


@lru_cache(maxsize=1)
def photos() -> tuple[Image.Image, ...]:
    """The photos as RGB images, longest side at most :data:`MAX_SIDE`."""
    try:
        from skimage import data
    except ImportError as e:  # the test extra
        raise RuntimeError(
            "the reliability suite needs scikit-image (pip install 'cbir[test]')"
        ) from e
    out = []
    for name in PHOTOS:
        a = getattr(data, name)()
        if a.dtype != np.uint8:
            a = (a * 255).astype(np.uint8) if a.max() <= 1 else a.astype(np.uint8)
        if a.ndim == 3 and a.shape[2] == 4:
            a = a[:, :, :3]
        img = Image.fromarray(a).convert("RGB")
        img.thumbnail((MAX_SIDE, MAX_SIDE), Image.BILINEAR)
        out.append(img)
    return tuple(out)


def variant(i: int) -> Image.Image:
    """The ``i``-th corpus image: photo ``i % 13``, changed by ``i // 13`` (0: the photo)."""
    base = photos()[i % len(PHOTOS)]
    k = i // len(PHOTOS)
    if k == 0:
        return base
    w, h = base.size
    ops = [
        lambda im: im.transpose(Image.FLIP_LEFT_RIGHT),
        lambda im: im.crop((w // 10, h // 10, w - w // 12, h - h // 9)),
        lambda im: im.rotate(7, resample=Image.BICUBIC, fillcolor=(127, 127, 127)),
        lambda im: im.transpose(Image.FLIP_TOP_BOTTOM),
        lambda im: im.resize((max(8, w * 3 // 4), max(8, h * 2 // 3)), Image.BILINEAR),
    ]
    img = base
    for j, op in enumerate(ops):  # the binary digits of k pick the changes
        if k >> j & 1:
            img = op(img)
    if k >= 1 << len(ops):
        img = img.rotate(k % 360, fillcolor=(0, 0, 0))
    return img


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    """``img`` encoded in ``fmt`` (a Pillow format name)."""
    buf = io.BytesIO()
    if fmt == "GIF":
        img = img.convert("P", palette=Image.ADAPTIVE)
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def write_corpus(dst: str | Path, n: int, start: int = 0) -> list[Path]:
    """Write ``n`` distinct real images (JPEG and PNG, some in a sub-folder) under ``dst``:
    variants ``start`` to ``start + n - 1``."""
    dst = Path(dst)
    (dst / "more").mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(start, start + n):
        folder = dst / "more" if i % 4 == 3 else dst
        name = f"{PHOTOS[i % len(PHOTOS)]}-{i:04d}"
        if i % 3 == 2:
            p = folder / f"{name}.png"
            p.write_bytes(encode(variant(i), "PNG"))
        else:
            p = folder / f"{name}.jpg"
            p.write_bytes(encode(variant(i), "JPEG", quality=88))
        out.append(p)
    return sorted(out)

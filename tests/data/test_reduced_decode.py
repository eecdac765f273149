"""decode(reduce_to=...): the band-by-band shrink gives what a full decode then
``Image.reduce`` gives, upright, for transparent, palette and EXIF-rotated images."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cbir.data.images import decode


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def _noise(w: int, h: int, mode: str) -> Image.Image:
    a = np.random.default_rng(0).integers(0, 256, (h, w, 4), dtype=np.uint8)
    return Image.fromarray(a, "RGBA").convert(mode) if mode != "RGBA" else Image.fromarray(a)


@pytest.mark.parametrize("mode", ["RGBA", "P", "L", "1", "RGB"])
@pytest.mark.parametrize("orientation", [1, 6])
def test_reduced_decode_equals_full_decode_then_reduce(mode: str, orientation: int):
    img = _noise(1800, 1212, mode)  # whole 4x4 blocks: the same grid when turned
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _png(img, exif=exif.tobytes(), **({"transparency": 0} if mode in "PL1" else {}))
    full = decode(data)
    small = decode(data, reduce_to=100)  # shorter side 1212 -> factor 4
    assert small.mode == "RGB" and small.info["orig_size"] == full.info["orig_size"]
    want = full.reduce(4)
    assert small.size == want.size == ((303, 450) if orientation == 6 else (450, 303))
    diff = np.abs(np.asarray(small, np.int16) - np.asarray(want, np.int16))
    assert diff.max() <= 1, diff.max()


def test_small_images_are_not_reduced():
    data = _png(_noise(500, 400, "RGB"))
    assert decode(data, reduce_to=224).size == (500, 400)


def test_a_partial_last_block_is_reduced_as_image_reduce_does():
    data = _png(_noise(1799, 1211, "P"), transparency=3)
    small, want = decode(data, reduce_to=100), decode(data).reduce(4)
    assert small.size == want.size == (450, 303)
    assert np.array_equal(np.asarray(small), np.asarray(want))

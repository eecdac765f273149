import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from cbir.data.images import decode, open_image, sniff
from cbir.errors import ImageError


def _encode(fmt: str, mode: str = "RGB", size=(40, 30)) -> bytes:
    img = Image.fromarray(
        np.random.default_rng(0).integers(0, 255, (*size[::-1], 3), np.uint8)
    ).convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    "fmt,mode",
    [
        ("JPEG", "RGB"),
        ("PNG", "RGBA"),
        ("PNG", "L"),
        ("GIF", "P"),
        ("WEBP", "RGB"),
        ("BMP", "RGB"),
        ("TIFF", "RGB"),
    ],
)
def test_decodes_every_format_to_rgb(fmt, mode):
    data = _encode(fmt, mode)
    assert sniff(data[:16]) == ("JPEG" if fmt == "JPEG" else fmt)
    img = decode(data, f"x.{fmt.lower()}")
    assert img.mode == "RGB" and img.size == (40, 30)


def test_bad_inputs_raise_clear_reasons(tmp_path):
    jpeg = _encode("JPEG", size=(200, 200))
    cases = {
        "empty": b"",
        "not-an-image": b"hello, I am text named .jpg",
        "truncated": jpeg[: len(jpeg) // 3],
    }
    for reason, data in cases.items():
        with pytest.raises(ImageError) as e:
            decode(data, "f.jpg")
        assert e.value.reason == reason
        assert "f.jpg" in str(e.value)


def _png_with_size(w: int, h: int) -> bytes:
    """A tiny PNG whose header declares w x h pixels (a decompression bomb)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 10)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_bomb_is_refused_before_decoding():
    with pytest.raises(ImageError) as e:
        decode(_png_with_size(100_000, 100_000), "bomb.png")
    assert e.value.reason == "bomb"


def test_open_image_missing_and_directory(tmp_path):
    with pytest.raises(ImageError) as e:
        open_image(tmp_path / "nope.jpg")
    assert e.value.reason == "missing"
    with pytest.raises(ImageError) as e:
        open_image(tmp_path)
    assert e.value.reason == "unreadable"


def test_jpeg_draft_decodes_smaller_but_keeps_original_size():
    data = _encode("JPEG", size=(1600, 1200))
    img = decode(data, "big.jpg", draft_size=224)
    assert min(img.size) >= 224 and img.size[0] < 1600
    assert img.info["orig_size"] == (1600, 1200)

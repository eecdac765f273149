"""Safe image decoding: formats sniffed from bytes, size limits, bombs, clear errors.

Every image that enters cbir (folders, datasets, uploads) goes through :func:`decode`.

Formats: JPEG (and MPO), PNG, GIF, WebP, BMP, TIFF, AVIF (Pillow's own plugin, where
Pillow was built with libavif), and HEIC/HEIF when the optional ``pillow-heif`` is
installed (``pip install 'cbir[formats]'``). The EXIF orientation is applied, so a photo
is embedded upright whatever way the camera stored it.
"""

from __future__ import annotations

import io
import os
import re
import stat
import warnings
from pathlib import Path

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError, features

from cbir.errors import ImageError

try:  # HEIC/HEIF (iPhone photos): the optional extra cbir[formats]
    from pillow_heif import register_heif_opener
except ImportError:  # pragma: no cover - depends on the install
    HEIF_AVAILABLE = False
else:
    register_heif_opener()
    HEIF_AVAILABLE = True
#: True when this Pillow reads AVIF (Pillow >= 11.2 built with libavif).
AVIF_AVAILABLE = bool(features.check("avif"))

#: Formats cbir accepts, as Pillow names them.
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "MPO", "AVIF", "HEIF"})
#: File name endings that claim to be images (a mismatch with the content is an error).
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
    | {".avif", ".heic", ".heif", ".hif"}
)
#: ISO base media file brands (bytes 8-12, and the compatible brands after) of still images.
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"heif"})
_BMFF_STILL = frozenset({b"mif1", b"msf1"})
#: Bytes of a file's start that :func:`sniff` looks at.
SNIFF_BYTES = 32
#: Largest accepted image, in pixels (width * height); larger is refused as a bomb.
MAX_PIXELS = int(os.environ.get("CBIR_MAX_PIXELS", 64_000_000))
#: Largest accepted file, in bytes.
MAX_BYTES = int(os.environ.get("CBIR_MAX_BYTES", 256 * 1024 * 1024))
#: Pixels converted at a time by a reducing decode (:func:`decode` with ``reduce_to``).
BAND_PIXELS = 1 << 20
#: EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

ImageFile.LOAD_TRUNCATED_IMAGES = False


def _sniff_bmff(head: bytes) -> str | None:
    """AVIF or HEIF from an ISO base media ``ftyp`` box (major, then compatible brands)."""
    size = int.from_bytes(head[:4], "big")
    major = head[8:12]
    compatible = [head[i : i + 4] for i in range(16, min(len(head), max(size, 16)) - 3, 4)]
    for brand in (major, *compatible):
        if brand in _AVIF_BRANDS:
            return "AVIF"
        if brand in _HEIF_BRANDS:
            return "HEIF"
    if major in _BMFF_STILL or any(b in _BMFF_STILL for b in compatible):
        return "HEIF"  # a still-image HEIF of another codec; Pillow decides
    return None  # MP4, QuickTime, ...: not a still image


def sniff(head: bytes) -> str | None:
    """Return the image format that the first bytes of a file announce, else None.

    Give it :data:`SNIFF_BYTES` bytes: HEIF and AVIF are told apart by the brands of
    their ``ftyp`` box.
    """
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:2] == b"BM" and len(head) >= 14:
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head[4:8] == b"ftyp" and len(head) >= 12:
        return _sniff_bmff(head)
    return None


def sniff_file(path: str | os.PathLike[str]) -> str | None:
    """Return the format announced by a file's first bytes (None if not an image or unreadable)."""
    try:
        with open(path, "rb") as f:
            return sniff(f.read(SNIFF_BYTES))
    except OSError:
        return None


def lift_pillow_limit() -> None:
    """Let Pillow open what :data:`MAX_PIXELS` (``CBIR_MAX_PIXELS``) allows.

    Pillow refuses images over its own ``Image.MAX_IMAGE_PIXELS`` (about 89 M pixels)
    before cbir's check runs; raising ``CBIR_MAX_PIXELS`` above it raises Pillow's too.
    Pillow's limit is never lowered.
    """
    cur = Image.MAX_IMAGE_PIXELS
    if cur is not None and cur < MAX_PIXELS:
        Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def _bomb(path: str, pixels: str) -> ImageError:
    return ImageError(
        path,
        "bomb",
        f"{pixels} pixels > limit {MAX_PIXELS} (CBIR_MAX_PIXELS; raise it to accept larger images)",
    )


def _displayed_size(img: Image.Image) -> tuple[int, int]:
    """The size as shown: width and height swapped when EXIF says the photo is turned 90 deg."""
    w, h = img.size
    try:
        orientation = img.getexif().get(0x0112)
    except Exception:  # damaged EXIF: exif_transpose ignores it too
        return w, h
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def _rgb(img: Image.Image) -> Image.Image:
    """``img`` as RGB, transparent pixels on white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    return img.convert("RGB")


def _reduced_rgb(img: Image.Image, factor: int) -> Image.Image:
    """``img`` as RGB, shrunk ``factor`` times by box averaging (``Image.reduce``), one band
    of rows at a time: no full-size RGBA or RGB copy is ever made, so the memory is the
    decoded image (one byte a pixel for 1-bit, grey or palette images) and one band."""
    w, h = img.size
    rows = factor * max(1, BAND_PIXELS // (w * factor))  # a multiple of factor
    out = Image.new("RGB", (-(-w // factor), -(-h // factor)))
    for y in range(0, h, rows):
        band = _rgb(img.crop((0, y, w, min(h, y + rows))))
        out.paste(band.reduce(factor), (0, y // factor))
    return out


def decode(
    data: bytes,
    path: str = "<bytes>",
    draft_size: int | None = None,
    reduce_to: int | None = None,
) -> Image.Image:
    """Decode image bytes into an upright RGB PIL image, or raise :class:`ImageError`.

    The EXIF orientation is applied (after a JPEG's reduced-scale decode, so it stays
    cheap); ``img.info["orig_size"]`` is the full-resolution (width, height) as displayed.

    Args:
        data: the file's bytes.
        path: the name to report in errors.
        draft_size: if given, JPEGs are decoded at the smallest DCT scale that is still at
            least this many pixels on each side (much faster for large photos).
        reduce_to: if given, an image whose shorter side is over 3x this is shrunk by an
            integer factor, keeping the shorter side at least 3x this (what a resize with
            ``reducing_gap=3`` does first), band by band as it is converted to RGB: a
            small PNG that claims 8000x8000 pixels then costs its decoded bytes only, not
            full-size RGBA and RGB copies (issue 16).
    """
    if not data:
        raise ImageError(path, "empty", "zero-byte file")
    if len(data) > MAX_BYTES:
        raise ImageError(path, "too-large", f"{len(data)} bytes > limit {MAX_BYTES}")
    fmt = sniff(data[:SNIFF_BYTES])
    if fmt is None:
        raise ImageError(
            path, "not-an-image", "content is not JPEG/PNG/GIF/WebP/BMP/TIFF/AVIF/HEIF"
        )
    lift_pillow_limit()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns about damaged metadata on stderr
            # (and about large images: cbir's own limit below decides, with its own message)
            try:
                img = Image.open(io.BytesIO(data))
            except UnidentifiedImageError:
                if fmt == "HEIF" and not HEIF_AVAILABLE:
                    raise ImageError(
                        path,
                        "unsupported-format",
                        "HEIF/HEIC needs pillow-heif: pip install 'cbir[formats]'",
                    ) from None
                if fmt == "AVIF" and not AVIF_AVAILABLE:
                    raise ImageError(
                        path, "unsupported-format", "this Pillow was built without AVIF"
                    ) from None
                raise
            if img.format not in ALLOWED_FORMATS:
                raise ImageError(path, "unsupported-format", str(img.format))
            w, h = img.size
            if w <= 0 or h <= 0:
                raise ImageError(path, "corrupt", f"invalid size {w}x{h}")
            if w * h > MAX_PIXELS:
                raise _bomb(path, f"{w}x{h} = {w * h}")
            orig_size = _displayed_size(img)
            if draft_size and img.format == "JPEG":
                img.draft("RGB", (draft_size, draft_size))
            img.load()
            factor = min(img.size) // (3 * reduce_to) if reduce_to else 0
            if factor > 1:
                try:
                    orientation = img.getexif().get(0x0112)
                except Exception:  # damaged EXIF: exif_transpose ignores it too
                    orientation = None
                img = _reduced_rgb(img, factor)
                if orientation in _UPRIGHT:
                    img = img.transpose(_UPRIGHT[orientation])
            else:
                img = ImageOps.exif_transpose(img) or img
                img = _rgb(img)
            img.info["orig_size"] = orig_size
            return img
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        m = re.search(r"\((\d+) pixels\)", str(e))  # Pillow's own limit, twice over
        raise _bomb(
            path, m.group(1) if m else f"over {2 * (Image.MAX_IMAGE_PIXELS or 0)}"
        ) from None
    except MemoryError:
        raise ImageError(path, "bomb", "out of memory while decoding") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as e:
        msg = str(e)
        reason = "truncated" if "truncat" in msg.lower() else "corrupt"
        raise ImageError(path, reason, msg[:200]) from None
    except Exception as e:  # Pillow plugins raise many types on hostile input
        raise ImageError(path, "corrupt", f"{type(e).__name__}: {str(e)[:200]}") from None


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """Read a file for decoding, mapping OS errors to :class:`ImageError`.

    Only regular files are read: a FIFO, device or socket is refused (reading one could
    block forever or never end), as is anything that grew past :data:`MAX_BYTES`.
    """
    p = Path(path)
    fd = -1
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ImageError(str(p), "unreadable", "is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(str(p), "unreadable", "not a regular file (a FIFO, socket or device)")
        if st.st_size > MAX_BYTES:
            raise ImageError(str(p), "too-large", f"{st.st_size} bytes > limit {MAX_BYTES}")
        with os.fdopen(fd, "rb") as f:
            fd = -1
            data = f.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            raise ImageError(str(p), "too-large", f"more than the limit of {MAX_BYTES} bytes")
        return data
    except ImageError:
        raise
    except IsADirectoryError:
        raise ImageError(str(p), "unreadable", "is a directory") from None
    except PermissionError:
        raise ImageError(str(p), "unreadable", "permission denied") from None
    except FileNotFoundError:
        raise ImageError(str(p), "missing", "file not found") from None
    except OSError as e:
        raise ImageError(str(p), "unreadable", e.strerror or str(e)) from None
    finally:
        if fd >= 0:
            os.close(fd)


def open_image(path: str | os.PathLike[str], draft_size: int | None = None) -> Image.Image:
    """Read and decode an image file safely; raises :class:`ImageError`."""
    return decode(read_bytes(path), str(path), draft_size=draft_size)

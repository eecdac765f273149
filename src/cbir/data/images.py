"""Safe image decoding: formats sniffed from bytes, size limits, bombs, clear errors.

Every image that enters cbir (folders, datasets, uploads) goes through :func:`decode`.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from pathlib import Path

from PIL import Image, ImageFile, ImageOps

from cbir.errors import ImageError

#: Formats cbir accepts, as Pillow names them.
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "MPO"})
#: File name endings that claim to be images (a mismatch with the content is an error).
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
)
#: Largest accepted image, in pixels (width * height); larger is refused as a bomb.
MAX_PIXELS = int(os.environ.get("CBIR_MAX_PIXELS", 64_000_000))
#: Largest accepted file, in bytes.
MAX_BYTES = int(os.environ.get("CBIR_MAX_BYTES", 256 * 1024 * 1024))

ImageFile.LOAD_TRUNCATED_IMAGES = False


def sniff(head: bytes) -> str | None:
    """Return the image format that the first bytes of a file announce, else None."""
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
    return None


def sniff_file(path: str | os.PathLike[str]) -> str | None:
    """Return the format announced by a file's first bytes (None if not an image or unreadable)."""
    try:
        with open(path, "rb") as f:
            return sniff(f.read(16))
    except OSError:
        return None


def decode(data: bytes, path: str = "<bytes>", draft_size: int | None = None) -> Image.Image:
    """Decode image bytes into an RGB PIL image, or raise :class:`ImageError`.

    Args:
        data: the file's bytes.
        path: the name to report in errors.
        draft_size: if given, JPEGs are decoded at the smallest DCT scale that is still at
            least this many pixels on each side (much faster for large photos).
    """
    if not data:
        raise ImageError(path, "empty", "zero-byte file")
    if len(data) > MAX_BYTES:
        raise ImageError(path, "too-large", f"{len(data)} bytes > limit {MAX_BYTES}")
    fmt = sniff(data[:16])
    if fmt is None:
        raise ImageError(path, "not-an-image", "content is not JPEG/PNG/GIF/WebP/BMP/TIFF")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns about damaged metadata on stderr
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.format not in ALLOWED_FORMATS:
                raise ImageError(path, "unsupported-format", str(img.format))
            w, h = img.size
            if w <= 0 or h <= 0:
                raise ImageError(path, "corrupt", f"invalid size {w}x{h}")
            if w * h > MAX_PIXELS:
                raise ImageError(
                    path, "bomb", f"{w}x{h} = {w * h} pixels > limit {MAX_PIXELS} (CBIR_MAX_PIXELS)"
                )
            if draft_size and img.format == "JPEG":
                img.draft("RGB", (draft_size, draft_size))
            img.load()
            img = ImageOps.exif_transpose(img) or img
            orig_size = (w, h)
            if img.mode != "RGB":
                if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                    rgba = img.convert("RGBA")
                    bg = Image.new("RGB", rgba.size, (255, 255, 255))
                    bg.paste(rgba, mask=rgba.getchannel("A"))
                    img = bg
                else:
                    img = img.convert("RGB")
            img.info["orig_size"] = orig_size
            return img
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(path, "bomb", str(e)) from None
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

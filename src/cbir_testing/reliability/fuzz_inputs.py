"""The malformed inputs of the fuzz run (:mod:`cbir_testing.reliability.fuzz`), generated
with hypothesis from real photos (encoded small as JPEG, PNG, GIF, WebP, BMP, TIFF).

Truncated and bit-flipped files, overwritten bytes, zero-byte files, huge declared
dimensions, decompression bombs (pixel floods and a zTXt text bomb), text and random
bytes named as images, a valid image under another format's name (it must work), and
file-system oddities: symlink loops, dangling links, unreadable files, FIFOs and folders
named as images, names that are not UTF-8, hold a newline, start with ``-`` or are 255
bytes long.
"""

from __future__ import annotations

import os
import stat
import struct
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from cbir_testing.reliability.corpus import encode, photos

FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
SUFFIX = {
    "JPEG": ".jpg",
    "PNG": ".png",
    "GIF": ".gif",
    "WEBP": ".webp",
    "BMP": ".bmp",
    "TIFF": ".tif",
}
#: Kinds that are files with content (they also go through the upload endpoint).
CONTENT_KINDS = (
    "valid",
    "valid-renamed",
    "truncated",
    "bitflip",
    "overwrite",
    "zero-byte",
    "huge-dims",
    "bomb",
    "text",
    "random-bytes",
    "wrong-magic",
)
#: Kinds that are file-system oddities (``cbir index`` and ``cbir search`` only).
FS_KINDS = ("symlink-loop", "dangling-link", "unreadable", "fifo", "folder")
#: Kinds that can never yield an image: indexing or searching one must fail with a reason.
NOT_IMAGE_KINDS = frozenset({"zero-byte", "text", *FS_KINDS})


@dataclass
class FuzzInput:
    """One generated input: ``name`` is the file name in bytes (it may not be UTF-8)."""

    kind: str
    name: bytes
    data: bytes = b""
    fmt: str = ""

    def describe(self) -> str:
        return f"{self.kind} {self.fmt} {self.name!r} ({len(self.data)} bytes)"


# ------------------------------------------------------------------- makers
@lru_cache(maxsize=1)
def bases() -> dict[str, list[bytes]]:
    """Small real photos encoded in each format (the material inputs are made from)."""
    out: dict[str, list[bytes]] = {f: [] for f in FORMATS}
    for i, img in enumerate(photos()[:6]):
        small = img.copy()
        small.thumbnail((64 + 16 * i, 64 + 16 * i))
        for fmt in FORMATS:
            kw = {"quality": 80} if fmt in ("JPEG", "WEBP") else {}
            out[fmt].append(encode(small, fmt, **kw))
    return out


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def set_dims(data: bytes, fmt: str, w: int, h: int) -> bytes:
    """``data`` with its header claiming ``w`` x ``h`` pixels (fields clipped to their width)."""
    b = bytearray(data)
    if fmt == "PNG" and b[12:16] == b"IHDR":
        b[16:24] = struct.pack(">II", w, h)
        b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])))
    elif fmt == "GIF":
        b[6:10] = struct.pack("<HH", min(w, 65535), min(h, 65535))
        i = b.find(b"\x2c", 13)
        if i > 0 and i + 9 <= len(b):
            b[i + 5 : i + 9] = struct.pack("<HH", min(w, 65535), min(h, 65535))
    elif fmt == "JPEG":
        for marker in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2"):
            i = b.find(marker)
            if i > 0:
                b[i + 5 : i + 9] = struct.pack(">HH", min(h, 65535), min(w, 65535))
                break
    elif fmt == "WEBP":
        i = b.find(b"\x9d\x01\x2a")
        if i > 0:
            b[i + 3 : i + 7] = struct.pack("<HH", min(w, 16383), min(h, 16383))
    elif fmt == "BMP":
        b[18:26] = struct.pack("<ii", min(w, 2**31 - 1), min(h, 2**31 - 1))
    elif fmt == "TIFF" and b[:2] == b"II":
        # ImageWidth (256) and ImageLength (257) entries of the first IFD, SHORT or LONG
        ifd = struct.unpack_from("<I", b, 4)[0]
        n = struct.unpack_from("<H", b, ifd)[0] if ifd + 2 <= len(b) else 0
        for k in range(n):
            e = ifd + 2 + 12 * k
            tag, typ = struct.unpack_from("<HH", b, e)
            if tag in (256, 257):
                v = w if tag == 256 else h
                if typ == 3:
                    struct.pack_into("<H", b, e + 8, min(v, 65535))
                else:
                    struct.pack_into("<I", b, e + 8, min(v, 2**32 - 1))
    return bytes(b)


def png_flood(w: int, h: int, rows_present: int | None = None) -> bytes:
    """A small, valid 1-bit PNG of ``w`` x ``h`` pixels (zero rows compress ~1000:1)."""
    row = b"\x00" + b"\x00" * ((w + 7) // 8)
    n = h if rows_present is None else rows_present
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(n)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


@lru_cache(maxsize=1)
def png_text_bomb() -> bytes:
    """A small PNG with a zTXt chunk that inflates to 64 MiB."""
    good = bases()["PNG"][0]
    text = zlib.compress(b"\0" * (64 << 20), 9)
    ztxt = _png_chunk(b"zTXt", b"comment\0\0" + text)
    return good[:33] + ztxt + good[33:]


def strategy() -> Any:
    """The hypothesis strategy of :class:`FuzzInput`."""
    from hypothesis import strategies as st

    name_stem = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=12)
    odd_names = st.sampled_from(
        [b"", b"\xff\xfe", b"caf\xe9", b"\x80x", b"line\nbreak", b"-k", b"\xed\xa0\x80"]
    )
    suffixes = st.sampled_from(
        [".jpg", ".jpeg", ".JPG", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".jpe", ""]
    )

    @st.composite
    def names(draw: Any, suffix: str | None = None) -> bytes:
        stem = draw(name_stem).encode()
        odd = draw(odd_names) if draw(st.integers(0, 3)) == 2 else b""
        suf = (suffix if suffix is not None else draw(suffixes)).encode()
        if draw(st.integers(0, 30)) == 13:  # the longest name a Linux file system takes
            return (stem + odd + b"L" * 255)[: 255 - len(suf)] + suf
        return (odd + stem if draw(st.booleans()) else stem + odd) + suf

    @st.composite
    def inputs(draw: Any) -> FuzzInput:
        kind = draw(st.sampled_from(CONTENT_KINDS + FS_KINDS))
        fmt = draw(st.sampled_from(FORMATS))
        base = draw(st.sampled_from(bases()[fmt]))
        data = base
        if kind == "valid-renamed":
            other = draw(st.sampled_from([f for f in FORMATS if f != fmt]))
            return FuzzInput(kind, draw(names(SUFFIX[other])), base, fmt)
        if kind == "truncated":
            data = base[: draw(st.integers(1, len(base) - 1))]
        elif kind == "bitflip":
            b = bytearray(base)
            for _ in range(draw(st.integers(1, 24))):
                pos = draw(st.integers(0, len(b) - 1))
                b[pos] ^= 1 << draw(st.integers(0, 7))
            data = bytes(b)
        elif kind == "overwrite":
            start = draw(st.integers(0, len(base) - 1))
            junk = draw(st.binary(min_size=1, max_size=64))
            data = base[:start] + junk + base[start + len(junk) :]
        elif kind == "zero-byte":
            data = b""
        elif kind == "huge-dims":
            w = draw(st.integers(1, 1 << 20))
            h = draw(st.integers(1, 1 << 20))
            data = set_dims(base, fmt, w, h)
        elif kind == "bomb":
            which = draw(
                st.sampled_from(["flood-over", "flood-over", "text", "flood-near", "flood-cut"])
            )
            fmt = "PNG"
            if which == "flood-over":
                data = png_flood(
                    draw(st.integers(9000, 60000)), draw(st.integers(9000, 60000)), rows_present=16
                )
            elif which == "text":
                data = png_text_bomb()
            elif which == "flood-near":  # just under the pixel limit: decodes, in bounded time
                data = png_flood(7800, 7800)
            else:  # declares a flood, holds a few rows
                data = png_flood(6000, 6000, rows_present=draw(st.integers(0, 200)))
        elif kind == "text":
            data = draw(st.text(min_size=1, max_size=400)).encode("utf-8", "surrogatepass")
        elif kind == "random-bytes":
            data = draw(st.binary(min_size=1, max_size=2048))
        elif kind == "wrong-magic":
            other = draw(st.sampled_from([f for f in FORMATS if f != fmt]))
            magic = bases()[other][0][:12]
            data = magic + base[len(magic) :]
        elif kind in FS_KINDS:
            data = base if kind == "unreadable" else b""
            return FuzzInput(kind, draw(names(SUFFIX[fmt])), data, fmt)
        suffix = SUFFIX[fmt] if kind != "text" else draw(st.sampled_from([".jpg", ".png", ".gif"]))
        name = draw(names(suffix)) if draw(st.integers(0, 4)) else draw(names())
        return FuzzInput(kind, name, data, fmt)

    return inputs()


def generate(n: int, seed: int = 0) -> list[FuzzInput]:
    """``n`` inputs drawn by hypothesis (deterministic for a ``seed``)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed

    out: list[FuzzInput] = []

    @hseed(seed)
    @settings(
        max_examples=n,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy())
    def collect(x: FuzzInput) -> None:
        out.append(x)

    collect()
    return out[:n]


def materialize(x: FuzzInput, folder: Path, i: int) -> bytes:
    """Create ``x`` in ``folder`` (made unique by ``i``); returns its path as bytes."""
    name = x.name or b"noname"
    stem, dot, suf = name.rpartition(b".")
    name = (stem + b"-%d." % i + suf) if dot and stem else name + b"-%d" % i
    name = name[-255:] if len(name) > 255 else name
    path = os.fsencode(folder) + b"/" + name.replace(b"/", b"_")
    if x.kind == "symlink-loop":
        other = os.fsencode(folder) + b"/loop-partner-%d" % i
        os.symlink(other, path)
        os.symlink(path, other)
    elif x.kind == "dangling-link":
        os.symlink(b"/nonexistent/cbir-fuzz/" + name, path)
    elif x.kind == "fifo":
        os.mkfifo(path)
    elif x.kind == "folder":
        os.mkdir(path)
        (Path(os.fsdecode(path)) / "inside.txt").write_text("a folder named like an image")
    else:
        with open(path, "wb") as f:
            f.write(x.data)
        if x.kind == "unreadable":
            os.chmod(path, 0)
    return path


def claims_image(path: bytes) -> bool:
    """Whether ``cbir index`` must account for this entry (name or content says image)."""
    from cbir.data.images import IMAGE_SUFFIXES, sniff_file

    p = Path(os.fsdecode(path))
    if p.is_dir() and not p.is_symlink():
        return False
    if p.suffix.lower() in IMAGE_SUFFIXES:
        return True
    try:
        return stat.S_ISREG(os.stat(path).st_mode) and sniff_file(p) is not None
    except OSError:
        return False

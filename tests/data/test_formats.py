"""Formats users have (HEIC, AVIF), EXIF orientation, and the pixel limit (issue 18, 3 and 6)."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from cbir.data import images
from cbir.data.folder import find_images
from cbir.data.images import decode, open_image, sniff
from cbir.errors import ImageError
from cbir.index.metadata import exif_from_bytes

pytest.importorskip("pillow_heif", reason="pillow-heif (cbir[formats]; in the test extra)")


def _astronaut(size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A real, asymmetric photo (scikit-image's astronaut), landscape."""
    from skimage import data

    return Image.fromarray(data.astronaut()).resize(size, Image.BICUBIC)


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_1bit(w: int, h: int, rows: bool = True) -> bytes:
    """A 1-bit black PNG of w x h pixels: small on disk; ``rows=False`` leaves no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    raw = (b"\x00" + b"\x00" * ((w + 7) // 8)) * h if rows else b"\x00" * 10
    idat = zlib.compress(raw, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_heic_and_avif_are_found_by_content_and_decoded(tmp_path, fmt):
    img = _astronaut()
    data = _encode(img, fmt, quality=90)
    assert sniff(data[:32]) == fmt
    suffix = ".heic" if fmt == "HEIF" else ".avif"
    (tmp_path / f"named{suffix}").write_bytes(data)
    (tmp_path / "no_suffix").write_bytes(data)  # e.g. a file exported without a name ending
    # an MP4 video (an ISO base media file too) is not an image
    (tmp_path / "clip").write_bytes(
        b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\0" * 64
    )
    found = {p.name for p in find_images(tmp_path)}
    assert found == {f"named{suffix}", "no_suffix"}
    for p in (tmp_path / f"named{suffix}", tmp_path / "no_suffix"):
        out = open_image(p)
        assert out.mode == "RGB" and out.size == img.size
        diff = np.abs(np.asarray(out, np.float32) - np.asarray(img, np.float32)).mean()
        assert diff < 12, diff  # the same photo, up to lossy coding


def _embed(img: Image.Image) -> np.ndarray:
    from cbir.backbones.efficientnet_lite import get_backbone

    bb = get_backbone(224, "crop")
    feats = bb.run(bb.preprocess(img)[None])
    f = np.asarray(feats[0] if isinstance(feats, tuple) else feats, np.float64)[0]
    return f / np.linalg.norm(f)


@pytest.mark.parametrize("fmt", ["JPEG", "AVIF", "HEIF"])
def test_exif_orientation_is_applied_before_embedding(fmt):
    stored = _astronaut((448, 336))  # the pixels as the camera stored them (landscape)
    upright = stored.transpose(Image.Transpose.ROTATE_270)  # what orientation 6 displays
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    data = _encode(stored, fmt, quality=95, exif=exif.tobytes())
    img = decode(data, f"rotated.{fmt.lower()}", draft_size=224)  # reduced-scale decode
    assert img.width < img.height  # portrait, as shown by every photo viewer
    assert img.info["orig_size"] == (336, 448)  # the size as displayed, not as stored
    e = _embed(img)
    assert float(e @ _embed(upright)) > 0.99
    assert float(e @ _embed(stored)) < 0.95


def test_cbir_max_pixels_lifts_pillows_own_limit(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after
    data = _png_1bit(9600, 9400)  # 90.2 M pixels: over Pillow's default 89.5 M
    with pytest.raises(ImageError) as e:
        decode(data, "big.png")  # cbir's default limit (64 M) refuses it, naming the knob
    assert e.value.reason == "bomb" and "CBIR_MAX_PIXELS" in str(e.value)
    monkeypatch.setattr(images, "MAX_PIXELS", 100_000_000)  # CBIR_MAX_PIXELS=100000000
    img = decode(data, "big.png")
    assert img.size == (9600, 9400) and img.info["orig_size"] == (9600, 9400)


def test_bomb_far_over_pillows_limit_names_cbir_max_pixels(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    with pytest.raises(ImageError) as e:
        decode(_png_1bit(20_000, 20_000, rows=False), "huge.png")  # Pillow's own error
    assert e.value.reason == "bomb"
    assert "400000000 pixels" in str(e.value) and "CBIR_MAX_PIXELS" in str(e.value)


def test_reading_exif_of_a_large_image_does_not_warn():
    data = _png_1bit(9600, 9400)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert exif_from_bytes(data) == {}
    assert not [w for w in seen if issubclass(w.category, Image.DecompressionBombWarning)]


def test_evaluate_skips_an_image_over_the_limit_as_index_does(tmp_path, photos_dir):
    """`cbir index` skips an image over the pixel limit; `cbir evaluate` must too, not abort."""
    root = tmp_path / "folder"
    photos = sorted(p for p in photos_dir.rglob("*") if p.is_file())[:6]
    for i, p in enumerate(photos):
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        (root / f"c{i % 2}" / p.name).write_bytes(p.read_bytes())
    (root / "c0" / "big.png").write_bytes(_png_1bit(9600, 9400))
    env_run = dict(capture_output=True, text=True, timeout=600)
    cbir = [sys.executable, "-m", "cbir.cli"]
    r = subprocess.run([*cbir, "index", str(root), "--index", str(tmp_path / "idx")], **env_run)
    assert r.returncode == 0, r.stderr
    assert "big.png: bomb" in r.stderr + r.stdout and "CBIR_MAX_PIXELS" in r.stderr + r.stdout
    assert "DecompressionBombWarning" not in r.stderr
    for attempt in ("computed", "cached"):  # the feature cache remembers the skipped file
        r = subprocess.run([*cbir, "evaluate", "--dataset", str(root), "--json"], **env_run)
        assert r.returncode == 0, (attempt, r.stderr)
        assert "skipped 1 image" in r.stderr and "big.png: bomb" in r.stderr, attempt
        assert "DecompressionBombWarning" not in r.stderr
        d = json.loads(r.stdout)
        assert d["n_queries"] == 6 and len(d["skipped"]) == 1


def test_features_of_a_set_with_an_unreadable_image_are_an_error_by_default(tmp_path, monkeypatch):
    """Training and the other callers still refuse a set that has an unreadable image."""
    from cbir.backbones.cache import dataset_features
    from cbir.data.base import ImageSet, file_loader
    from cbir.errors import CbirError

    monkeypatch.setenv("CBIR_CACHE", str(tmp_path / "cache"))
    good = tmp_path / "a.jpg"
    _astronaut((96, 96)).save(good)
    bad = tmp_path / "b.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    paths = [str(good), str(bad)]
    s = ImageSet("t/all", np.array([0, 1]), file_loader(paths), paths, paths)
    f = dataset_features(s, size=96, progress=False, skip_failed=True)
    assert np.isfinite(f[0]).all() and np.isnan(f[1]).all()
    for subset in (s, s.subset([1, 0])):  # cached, and sliced from the cache
        with pytest.raises(CbirError, match="b.jpg"):
            dataset_features(subset, size=96, progress=False)
    np.testing.assert_array_equal(dataset_features(s.subset([0]), size=96, progress=False), f[[0]])

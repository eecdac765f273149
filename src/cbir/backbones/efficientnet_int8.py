"""``efficientnet-lite0-int8``: EfficientNet-Lite0 with int8 weights and activations.

Post-training static quantisation (Jacob et al., "Quantization and Training of Neural
Networks for Efficient Integer-Arithmetic-Only Inference", CVPR 2018) of the fp32 ONNX
export (:mod:`cbir.backbones.efficientnet_lite`) with onnxruntime's ``quantize_static``:
QDQ format, per-channel symmetric int8 weights, uint8 activations with ranges calibrated
on images that ship with cbir's dependencies (scikit-image's photos, seeded random crops
of each, and Fashion-MNIST images from Debian's ``dataset-fashion-mnist``). EfficientNet-Lite
was designed for this (ReLU6, no squeeze-excitation; Tan & Le, ICML 2019).

The model is built once per machine and input size, at first use, and cached in
``$CBIR_CACHE/backbones`` under a name keyed by the fp32 file's digest, the size and
:data:`CALIBRATION`; the build is deterministic (fixed seed, fixed image order), written
atomically, under a file lock so that two processes never build it together.
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import hashlib
import io
import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from cbir.backbones import efficientnet_lite
from cbir.backbones.preprocess import Preprocess
from cbir.backbones.session import cpu_session
from cbir.errors import CbirError
from cbir.utils import cache_dir, fsync_dir, sha256_file

NAME = "efficientnet-lite0-int8"
#: Version of the calibration recipe (images, crops, seed, method, excluded nodes): part
#: of the cache key and of the fingerprint. The key also holds a digest of the settings
#: below, so changing one builds a new file.
CALIBRATION = 1
SEED = 0
METHOD = "MinMax"
#: Random crops per scikit-image photo (besides the whole photo).
CROPS_PER_PHOTO = 4
#: Fashion-MNIST training images in the calibration set.
FASHION_IMAGES = 256
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
#: Nodes kept in fp32 (none). Keeping the last 1x1 convolution, the pooling and the
#: classifier (``/_conv_head/Conv``, ``/ReduceMean``, ``/_fc/Gemm``) in fp32 gave the same
#: feature cosine to fp32 (0.9798 vs 0.9797 mean over 100 held-out images at 224 px) and a
#: 5 % slower forward, so every node is quantised.
KEEP_FP32: tuple[str, ...] = ()


def _photos() -> list[Image.Image]:
    """scikit-image's bundled photos (PNG and JPEG), RGB, in file-name order."""
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    files = sorted(glob.glob(str(folder / "*.png")) + glob.glob(str(folder / "*.jpg")))
    out = []
    for f in files:
        with Image.open(f) as im:
            out.append(im.convert("RGB"))
    return out


def _fashion(n: int, rng: np.random.Generator) -> list[Image.Image]:
    """``n`` Fashion-MNIST training images (28 px grey), drawn with ``rng``."""
    path = FASHION_DIR / "train-images-idx3-ubyte.gz"
    if not path.exists():
        raise CbirError(
            f"{path}: missing; the int8 backbone calibrates on it"
            " (apt-get install dataset-fashion-mnist)"
        )
    with gzip.open(path) as fh:
        raw = np.frombuffer(fh.read()[16:], np.uint8).reshape(-1, 28, 28)
    idx = np.sort(rng.choice(len(raw), n, replace=False))
    return [Image.fromarray(raw[i]).convert("RGB") for i in idx]


def calibration_images(size: int, seed: int = SEED) -> np.ndarray:
    """The calibration batch ``(n, size, size, 3)`` uint8, the same on every machine with
    the same scikit-image: each photo whole and in ``CROPS_PER_PHOTO`` random crops (50-100 %
    of each side), plus ``FASHION_IMAGES`` Fashion-MNIST images, all through the backbone's
    :class:`Preprocess`."""
    rng = np.random.default_rng(seed)
    pre = Preprocess(size=size)
    out = []
    for img in _photos():
        out.append(pre(img))
        w, h = img.size
        for _ in range(CROPS_PER_PHOTO):
            cw, ch = int(w * rng.uniform(0.5, 1.0)), int(h * rng.uniform(0.5, 1.0))
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            out.append(pre(img.crop((x, y, x + cw, y + ch))))
    out += [pre(img) for img in _fashion(FASHION_IMAGES, rng)]
    return np.stack(out)


class _Reader:
    """onnxruntime ``CalibrationDataReader`` over a uint8 batch, ``batch`` images per item;
    ``set_range`` lets the calibrator collect a few items at a time (bounded memory)."""

    def __init__(self, images: np.ndarray, batch: int = 16) -> None:
        self._items = [{"images": images[i : i + batch]} for i in range(0, len(images), batch)]
        self._it: Iterator[dict[str, np.ndarray]] = iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self._items[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._items)


def quantize(
    fp32: str | os.PathLike[str],
    out: str | os.PathLike[str],
    images: np.ndarray,
    keep_fp32: tuple[str, ...] = KEEP_FP32,
    method: str = METHOD,
) -> None:
    """Write the QDQ int8 model of ``fp32`` to ``out`` (not atomic), calibrated on ``images``."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="cbir-int8-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        reader = _Reader(images)
        # onnxruntime logs "please pre-process" and calibration chatter at WARNING/INFO
        log = logging.getLogger()
        level = log.level
        log.setLevel(logging.ERROR)
        try:
            # the histogram calibrators print progress on stdout
            with contextlib.redirect_stdout(io.StringIO()):
                quant_pre_process(os.fspath(fp32), os.fspath(pre), skip_symbolic_shape=True)
                quantize_static(
                    os.fspath(pre),
                    os.fspath(out),
                    reader,  # type: ignore[arg-type]
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    weight_type=QuantType.QInt8,
                    activation_type=QuantType.QUInt8,
                    calibrate_method=getattr(CalibrationMethod, method),
                    nodes_to_exclude=list(keep_fp32),
                    extra_options={
                        "ActivationSymmetric": False,
                        # collect one item (16 images) at a time: bounded memory
                        "CalibStridedMinMax": 1,
                    },
                )
        finally:
            log.setLevel(level)


_build_lock = threading.Lock()


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive ``flock`` on ``path`` (held by one process at a time)."""
    import fcntl

    with open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def int8_path(size: int) -> Path:
    """The cached int8 model for input ``size``, built on first use (see the module doc)."""
    fp32 = efficientnet_lite.onnx_path(size)
    digest = _digest(str(fp32), fp32.stat().st_size, fp32.stat().st_mtime_ns)
    folder = cache_dir("backbones")
    path = folder / f"{NAME}-{digest}-{size}px-calib{CALIBRATION}-{recipe_digest()}.onnx"
    if path.exists():
        return path
    with _build_lock, _file_lock(folder / f".{path.name}.lock"):
        if not path.exists():  # another process may have built it while we waited
            tmp = folder / f".{path.name}.{os.getpid()}.tmp"
            try:
                quantize(fp32, tmp, calibration_images(size))
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(tmp, path)
                fsync_dir(folder)
            finally:
                tmp.unlink(missing_ok=True)
    return path


def recipe_digest() -> str:
    """8 hex digits of the calibration settings (part of the cache file's name)."""
    recipe = [CALIBRATION, SEED, METHOD, CROPS_PER_PHOTO, FASHION_IMAGES, list(KEEP_FP32)]
    return hashlib.sha256(json.dumps(recipe).encode()).hexdigest()[:8]


@lru_cache(maxsize=16)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    """First 12 hex digits of a file's sha256, hashed once per (path, size, mtime)."""
    return sha256_file(path)[:12]


class EfficientNetLite0Int8(efficientnet_lite.ExportSession):
    """EfficientNet-Lite0 quantised to int8 (see the module doc); the same features
    (1280-d) and ImageNet logits as ``efficientnet-lite0``, about 2x faster on CPUs with
    int8 dot-product instructions, and not mixable with its fp32 features in one index.

    Args:
        size: input side in pixels (the int8 model is built per size).
        mode: resize mode of :class:`Preprocess` ("crop" or "squash").
        threads: onnxruntime intra-op threads (default: all cores).
    """

    name = NAME
    dim = efficientnet_lite.DIM
    n_classes = efficientnet_lite.N_CLASSES

    def __init__(self, size: int = 224, mode: str = "crop", threads: int | None = None) -> None:
        self.preprocess = Preprocess(size=size, mode=mode)
        self.path = int8_path(size)
        st = self.path.stat()
        self.sha256 = _digest(str(self.path), st.st_size, st.st_mtime_ns)
        self.session = cpu_session(self.path, threads)

    @property
    def fingerprint(self) -> dict:
        """ImageNet weights digest, int8 model digest, calibration version, preprocessing."""
        return {
            "backbone": self.name,
            "weights": efficientnet_lite.weights_digest(),
            "sha256": self.sha256,
            "calibration": CALIBRATION,
            "dim": self.dim,
            "preprocess": self.preprocess.to_dict(),
        }


@lru_cache(maxsize=8)
def _shared(size: int, mode: str) -> EfficientNetLite0Int8:
    return EfficientNetLite0Int8(size, mode)


def open_int8(size: int = 224, mode: str = "crop", threads: int | None = None):
    """The registry's factory: a shared instance per (size, mode), or a private one with
    its own ``threads``."""
    if threads is None:
        return _shared(int(size), mode)
    return EfficientNetLite0Int8(size, mode, threads)

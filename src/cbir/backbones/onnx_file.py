"""``onnx:PATH.onnx``: any image-embedding ONNX file as a backbone.

The model takes one float input ``(n, 3, H, W)`` (NCHW) of pixels scaled to [0, 1] and
normalised per channel as ``(x - mean) / std``, and gives features ``(n, dim)`` (or
``(n, dim, h, w)`` maps, average-pooled here). ``mean`` / ``std`` come from the options,
else from the model's ``metadata_props`` (keys ``mean`` and ``std``: three numbers, comma
separated or a JSON list), else ImageNet's. The input side is the one the model declares
(``size`` must match it), or ``size`` (default 224) for a model with free spatial axes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cbir.backbones.base import ImageBackbone, no_logits
from cbir.backbones.preprocess import Preprocess
from cbir.backbones.session import cpu_session
from cbir.errors import CbirError
from cbir.utils import sha256_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_SIZE = 224


def _triple(value: Any, what: str, source: str) -> tuple[float, float, float]:
    """Three floats from a sequence, a number, or text ("0.5,0.5,0.5" or a JSON list)."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = (
                json.loads(text) if text.startswith("[") else [float(v) for v in text.split(",")]
            )
        except ValueError:
            raise CbirError(f"{source}: {what} {value!r} is not three numbers") from None
    if isinstance(value, int | float):
        value = [value] * 3
    vals = [float(v) for v in value]
    if len(vals) != 3 or (what == "std" and min(vals) <= 0):
        raise CbirError(f"{source}: {what} must be three numbers (std > 0), got {value!r}")
    return vals[0], vals[1], vals[2]


class OnnxFileBackbone(ImageBackbone):
    """An ONNX image-embedding model run by onnxruntime on the CPU.

    Args:
        path: the ``.onnx`` file.
        size: input side in pixels (default: the model's declared one, else 224).
        mode: resize mode of :class:`Preprocess` ("crop" or "squash").
        mean, std: per-channel normalisation of [0, 1] pixels (default: the model's
            metadata, else ImageNet's).
        output: the output holding the features (default: the first).
        threads: onnxruntime intra-op threads (default: all cores).
    """

    name = "onnx"
    #: normalisation when neither the options nor the model's metadata give one
    default_mean: tuple[float, float, float] = IMAGENET_MEAN
    default_std: tuple[float, float, float] = IMAGENET_STD
    #: Pillow resampling (:class:`Preprocess`)
    resample = "auto"

    def __init__(
        self,
        path: str | os.PathLike[str],
        size: int | None = None,
        mode: str = "crop",
        mean: Sequence[float] | str | None = None,
        std: Sequence[float] | str | None = None,
        output: str | None = None,
        threads: int | None = None,
    ) -> None:
        p = Path(os.path.expanduser(os.fspath(path)))
        if not p.is_file():
            raise CbirError(f"{path}: no such ONNX file (onnx:PATH names a .onnx model file)")
        self.path = p.resolve()
        self.sha256 = sha256_file(p)
        try:
            self.session = cpu_session(p, threads)
        except Exception as e:  # onnxruntime raises its own types for a bad file
            msg = str(e).splitlines()[0][:300] if str(e) else ""
            raise CbirError(
                f"{path}: not an ONNX model onnxruntime can run ({type(e).__name__}: {msg})"
            ) from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].type != "tensor(float)":
            got = ", ".join(f"{i.name} {i.type} {i.shape}" for i in inputs)
            raise CbirError(f"{path}: expected one float input (n, 3, H, W), got {got}")
        self.input = inputs[0].name
        c, h, w = inputs[0].shape[1:]
        if isinstance(c, int) and c != 3:
            raise CbirError(f"{path}: the input has {c} channels, not 3 (RGB, NCHW)")
        declared = h if isinstance(h, int) and h == w else None
        if isinstance(h, int) != isinstance(w, int) or (isinstance(h, int) and h != w):
            raise CbirError(f"{path}: the input must be square or free, got {h} x {w}")
        if size is not None and declared is not None and int(size) != declared:
            raise CbirError(f"{path}: the model takes {declared} px inputs, not --size {size}")
        size = int(size or declared or DEFAULT_SIZE)
        meta = self.session.get_modelmeta().custom_metadata_map
        self.mean = _triple(
            mean if mean is not None else meta.get("mean", self.default_mean), "mean", str(path)
        )
        self.std = _triple(
            std if std is not None else meta.get("std", self.default_std), "std", str(path)
        )
        outputs = [o.name for o in self.session.get_outputs()]
        if output is not None and output not in outputs:
            raise CbirError(f"{path}: no output {output!r} (outputs: {', '.join(outputs)})")
        self.output = output or outputs[0]
        self.preprocess = Preprocess(size=size, mode=mode, resample=self.resample)
        self._scale = 1.0 / (255.0 * np.asarray(self.std, np.float32))[None, :, None, None]
        self._shift = (np.asarray(self.mean, np.float32) / np.asarray(self.std, np.float32))[
            None, :, None, None
        ]
        self.dim = int(self.run(np.zeros((1, size, size, 3), np.uint8))[0].shape[1])

    @property
    def fingerprint(self) -> dict[str, Any]:
        """Name, file sha256, output, dim and preprocessing (size, resize, normalisation)."""
        return {
            "backbone": self.name,
            "sha256": self.sha256,
            "output": self.output,
            "dim": self.dim,
            "preprocess": {
                "size": self.preprocess.size,
                "mode": self.preprocess.mode,
                "resample": self.preprocess.resample,
                "mean": list(self.mean),
                "std": list(self.std),
            },
        }

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Features ``(n, dim)`` of a preprocessed uint8 batch ``(n, size, size, 3)``; no logits."""
        x = np.asarray(batch, np.uint8).transpose(0, 3, 1, 2).astype(np.float32)
        x *= self._scale
        x -= self._shift
        (f,) = self.session.run([self.output], {self.input: np.ascontiguousarray(x)})
        f = np.asarray(f, np.float32)
        if f.ndim == 4:  # feature maps: global average pooling
            f = f.mean(axis=(2, 3))
        return np.ascontiguousarray(f.reshape(len(x), -1)), no_logits(len(x))

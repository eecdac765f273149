"""Image preprocessing with Pillow + numpy (torchvision does not import beside our torch).

EfficientNet-Lite was trained with inputs scaled as ``(x - 127) / 128`` (the TF-Lite
recipe of Tan & Le, "EfficientNet", ICML 2019), not ImageNet mean/std.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Preprocess:
    """How an RGB image becomes the backbone's input tensor.

    Args:
        size: square input side in pixels.
        mode: "crop" resizes the shorter side to ``size`` then centre-crops;
            "squash" resizes the whole image to ``size x size``.
        mean, std: per-channel scaling applied to 0-255 pixel values.
    """

    size: int = 224
    mode: str = "crop"
    mean: float = 127.0
    std: float = 128.0
    #: "auto": antialiased bilinear when shrinking (fast), bicubic when enlarging.
    resample: str = "auto"

    def to_dict(self) -> dict:
        return asdict(self)

    def resize(self, img: Image.Image) -> Image.Image:
        """Resize (and crop) ``img`` to ``size x size``.

        The crop box is passed to ``Image.resize`` so only the kept region is resampled.
        """
        s = self.size
        if img.mode != "RGB":
            img = img.convert("RGB")
        w, h = img.size
        if (w, h) == (s, s):
            return img
        if self.mode == "squash":
            box: tuple[float, float, float, float] = (0, 0, w, h)
            shrink = min(w, h) > s
        else:
            c = min(w, h)
            left, top = (w - c) / 2, (h - c) / 2
            box = (left, top, left + c, top + c)
            shrink = c > s
        if self.resample == "auto":
            method = Image.BILINEAR if shrink else Image.BICUBIC
        else:
            method = getattr(Image, self.resample.upper())
        return img.resize((s, s), method, box=box, reducing_gap=3.0 if shrink else None)

    def __call__(self, img: Image.Image) -> np.ndarray:
        """Return the ``(size, size, 3)`` uint8 RGB array the backbone takes.

        Scaling to float happens inside the model (the ONNX graph, or :meth:`normalize`
        for PyTorch), so the decoding threads do as little as possible.
        """
        return np.asarray(self.resize(img), dtype=np.uint8)

    def normalize(self, batch: np.ndarray) -> np.ndarray:
        """``(n, h, w, 3)`` uint8 -> ``(n, 3, h, w)`` float32 scaled as the model expects."""
        a = np.asarray(batch).transpose(0, 3, 1, 2).astype(np.float32)
        a -= self.mean
        a *= 1.0 / self.std
        return a

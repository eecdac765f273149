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

    def to_dict(self) -> dict:
        return asdict(self)

    def resize(self, img: Image.Image) -> Image.Image:
        """Resize (and crop) ``img`` to ``size x size``."""
        s = self.size
        if img.mode != "RGB":
            img = img.convert("RGB")
        w, h = img.size
        if self.mode == "squash" or w == h:
            return img.resize((s, s), Image.BICUBIC, reducing_gap=3.0) if (w, h) != (s, s) else img
        scale = s / min(w, h)
        nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
        img = img.resize((nw, nh), Image.BICUBIC, reducing_gap=3.0)
        left, top = (nw - s) // 2, (nh - s) // 2
        return img.crop((left, top, left + s, top + s))

    def __call__(self, img: Image.Image) -> np.ndarray:
        """Return a float32 CHW array ready for the backbone."""
        a = np.asarray(self.resize(img), dtype=np.float32)
        a = (a - self.mean) * (1.0 / self.std)
        return np.ascontiguousarray(a.transpose(2, 0, 1))

"""``open_clip:MODEL[:PRETRAINED_OR_PATH]``: an open_clip image-text model (CLIP: Radford et
al., ICML 2021; OpenCLIP: Cherti et al., "Reproducible scaling laws for contrastive
language-image learning", CVPR 2023) as a backbone that also embeds text.

``PRETRAINED_OR_PATH`` is a weights file you have (``.pt`` / ``.bin`` / ``.safetensors``),
or an open_clip pretrained tag found in your local Hugging Face cache (nothing is
downloaded at search time on a machine without network). Without it the model has random
weights drawn with seed 0: only for testing the plumbing (``open_clip:ViT-B-32``).
Needs ``pip install 'cbir[clip]'`` (open-clip-torch, torch, torchvision).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cbir.backbones.preprocess import Preprocess
from cbir.backbones.torch_model import (
    TorchBackbone,
    import_library,
    normalize_model_arg,
    state_digest,
    weights_path,
)
from cbir.errors import CbirError

#: the seed of a model without weights (``pretrained=None``): the same model every time
RANDOM_SEED = 0


class OpenClipBackbone(TorchBackbone):
    """An open_clip model: ``encode_image`` for images, ``encode_text`` for texts."""

    name = "open_clip"
    normalize_arg = staticmethod(normalize_model_arg)

    def __init__(
        self, arg: str, size: int | None = None, mode: str = "crop", threads: int | None = None
    ) -> None:
        model_name, _, pretrained = arg.partition(":")
        if not model_name:
            raise CbirError("--backbone open_clip:MODEL[:PRETRAINED_OR_PATH] needs a MODEL")
        open_clip = import_library("open_clip", f"open_clip:{arg}")
        import torch

        self.set_threads(threads)
        if model_name not in open_clip.list_models():
            raise CbirError(
                f"open_clip has no model {model_name!r} (open_clip.list_models() lists them,"
                " e.g. ViT-B-32)"
            )
        path = weights_path(pretrained)
        try:
            if pretrained:
                model = open_clip.create_model(
                    model_name, pretrained=str(path) if path else pretrained, device="cpu"
                )
                self.weights = f"file:{path.name}" if path else pretrained
            else:
                torch.manual_seed(RANDOM_SEED)
                model = open_clip.create_model(model_name, pretrained=None, device="cpu")
                self.weights = f"random:seed{RANDOM_SEED}"
        except CbirError:
            raise
        except Exception as e:
            raise CbirError(
                f"open_clip could not build {model_name} with {pretrained!r}:"
                f" {type(e).__name__}: {str(e)[:200]} (give a weights file you have)"
            ) from None
        self.model = model.eval()
        self.model_name = model_name
        self.tokenizer = open_clip.get_tokenizer(model_name)
        visual = model.visual
        side = int(
            visual.image_size[0]
            if isinstance(visual.image_size, (tuple, list))
            else visual.image_size
        )
        if size is not None and int(size) != side:
            raise CbirError(f"open_clip {model_name} takes {side} px inputs, not --size {size}")
        size = side
        self.mean = tuple(
            float(v)
            for v in getattr(visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073)
        )  # type: ignore[assignment]
        self.std = tuple(
            float(v)
            for v in getattr(visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711)
        )  # type: ignore[assignment]
        self.preprocess = Preprocess(size=size, mode=mode, resample="bicubic")
        self.digest = state_digest(model)
        self.dim = int(self.run(np.zeros((1, size, size, 3), np.uint8))[0].shape[1])

    def forward(self, x: Any) -> tuple[Any, None]:
        return self.model.encode_image(x), None

    @property
    def fingerprint(self) -> dict[str, Any]:
        fp = super().fingerprint
        fp["text"] = {"tokenizer": type(self.tokenizer).__name__}
        return fp

    def embed_text(self, texts: list[str]) -> np.ndarray:
        """Text embeddings ``(n, dim)`` float32 in the image embeddings' space."""
        import torch

        with torch.no_grad():
            t = self.model.encode_text(self.tokenizer([str(s) for s in texts]))
        return np.ascontiguousarray(t.float().numpy(), np.float32)

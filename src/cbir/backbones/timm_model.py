"""``timm:MODEL[:CHECKPOINT]``: any image model of timm (PyTorch Image Models, Wightman
2019) as a backbone: the pooled features before the classifier (``pre_logits``).

``CHECKPOINT`` is a weights file you have (``timm.create_model(..., checkpoint_path=)``);
with a 1000-class ImageNet head its logits also give each image's top-5 ImageNet classes
(class-keyword text search). Without it the model has random weights drawn with seed 0:
only for testing the plumbing. Input size, normalisation and resampling come from the
model's pretrained config (``timm.data.resolve_data_config``). Needs ``pip install
'cbir[clip]'`` (timm, torch, torchvision).
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

RANDOM_SEED = 0


class TimmBackbone(TorchBackbone):
    """A timm model: ``forward_features`` then ``forward_head(pre_logits=True)``."""

    name = "timm"
    normalize_arg = staticmethod(normalize_model_arg)

    def __init__(
        self, arg: str, size: int | None = None, mode: str = "crop", threads: int | None = None
    ) -> None:
        model_name, _, checkpoint = arg.partition(":")
        timm = import_library("timm", f"timm:{arg}")
        import torch

        self.set_threads(threads)
        path = weights_path(checkpoint)
        if checkpoint and path is None:
            raise CbirError(f"timm:{arg}: {checkpoint} is not a weights file you have")
        try:
            torch.manual_seed(RANDOM_SEED)
            model = timm.create_model(
                model_name, pretrained=False, checkpoint_path=str(path) if path else ""
            )
        except Exception as e:
            raise CbirError(
                f"timm could not build {model_name!r}: {type(e).__name__}: {str(e)[:200]}"
                " (timm.list_models() lists the names)"
            ) from None
        self.model = model.eval()
        self.model_name = model_name
        self.weights = f"file:{path.name}" if path else f"random:seed{RANDOM_SEED}"
        cfg = timm.data.resolve_data_config({}, model=model)
        side = int(size or cfg["input_size"][-1])
        self.mean = tuple(float(v) for v in cfg["mean"])  # type: ignore[assignment]
        self.std = tuple(float(v) for v in cfg["std"])  # type: ignore[assignment]
        resample = "bicubic" if cfg.get("interpolation") == "bicubic" else "auto"
        self.preprocess = Preprocess(size=side, mode=mode, resample=resample)
        self.digest = state_digest(model)
        #: ImageNet logits only from a checkpoint with a 1000-class head
        self.n_classes = 1000 if path and getattr(model, "num_classes", 0) == 1000 else 0
        self.dim = int(self.run(np.zeros((1, side, side, 3), np.uint8))[0].shape[1])

    def forward(self, x: Any) -> tuple[Any, Any | None]:
        maps = self.model.forward_features(x)
        feats = self.model.forward_head(maps, pre_logits=True)
        logits = self.model.forward_head(maps) if self.n_classes else None
        return feats, logits

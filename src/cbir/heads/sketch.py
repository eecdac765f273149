"""The sketch branch of a sketch model (after Liu et al., "Deep Sketch Hashing: Fast
Free-hand Sketch-Based Image Retrieval", CVPR 2017): the backbone on a drawing, then a
small head that maps the drawing's features to a point of the *image* backbone's feature
space (trained by ``cbir train --method sketch``, :mod:`cbir.train.methods.sketch`).

Why the image backbone's space, not a code of one index: a predicted image feature goes
through whatever transform an index holds (the frozen centred cosine, a hashing or metric
head), so one sketch model searches every index built on the same backbone (same
fingerprint: weights and input size), binary or float, without retraining per index. The
head gives a direction; the point is ``mean + radius * direction`` with the training
images' mean feature and their median distance from it, so it lies where image features
lie.

The model is one numpy file (``sketch.npz``): the layers' weights, the input statistics,
the target mean and radius, and a JSON header (format, backbone fingerprint, drawing
style). Search needs numpy only, no torch.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from cbir.errors import CbirError
from cbir.heads.base import l2_normalize
from cbir.utils import atomic_write_bytes

SKETCH_FILE = "sketch.npz"
SKETCH_FORMAT = "cbir-sketch-1"


def sketch_arrays(
    layers: list[tuple[np.ndarray, np.ndarray]],
    in_mean: np.ndarray,
    in_std: np.ndarray,
    target_mean: np.ndarray,
    radius: float,
    meta: dict[str, Any],
) -> dict[str, np.ndarray]:
    """The arrays of a sketch model: ``layers`` are ``(weight (out, in), bias)`` of the
    head's linear layers (ReLU between them); ``meta`` the JSON header."""
    arrays: dict[str, np.ndarray] = {
        "in_mean": np.asarray(in_mean, np.float32),
        "in_std": np.asarray(in_std, np.float32),
        "target_mean": np.asarray(target_mean, np.float32),
        "radius": np.asarray(radius, np.float32),
        "meta": np.frombuffer(
            json.dumps({"format": SKETCH_FORMAT, **meta}).encode(), dtype=np.uint8
        ),
    }
    for i, (w, b) in enumerate(layers):
        arrays[f"w{i}"] = np.asarray(w, np.float32)
        arrays[f"b{i}"] = np.asarray(b, np.float32)
    return arrays


def write_sketch_model(path: str | os.PathLike[str], arrays: dict[str, np.ndarray]) -> Path:
    """Write a sketch model's arrays (:func:`sketch_arrays`) atomically."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write_bytes(Path(path), buf.getvalue())


class SketchModel:
    """Drawing features -> predicted image features (see the module doc)."""

    def __init__(self, arrays: dict[str, np.ndarray], path: Path | None = None) -> None:
        self.path = path
        self.meta: dict[str, Any] = json.loads(bytes(arrays["meta"]).decode())
        if self.meta.get("format") != SKETCH_FORMAT:
            raise CbirError(f"{path}: not a cbir sketch model (format {SKETCH_FORMAT} expected)")
        self.in_mean = arrays["in_mean"]
        self.in_std = arrays["in_std"]
        self.target_mean = arrays["target_mean"]
        self.radius = float(arrays["radius"])
        n = sum(1 for k in arrays if k.startswith("w"))
        self.layers = [(arrays[f"w{i}"], arrays[f"b{i}"]) for i in range(n)]

    @classmethod
    def from_path(cls, path: str | os.PathLike[str]) -> SketchModel:
        """The model of a ``cbir train --method sketch`` run (its directory or sketch.npz)."""
        p = Path(path)
        f = p / SKETCH_FILE if p.is_dir() else p
        if not f.exists():
            raise CbirError(
                f"{path}: no sketch model here (expected {SKETCH_FILE}); train one with"
                " `cbir train --method sketch --dataset DATASET --out RUN_DIR`"
            )
        try:
            with np.load(f, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, KeyError) as e:
            raise CbirError(f"{f}: not a cbir sketch model ({e}); train it again") from None
        if "meta" not in arrays:
            raise CbirError(f"{f}: not a cbir sketch model (no header); train it again")
        return cls(arrays, f)

    @property
    def backbone(self) -> dict[str, Any]:
        """The fingerprint of the backbone both branches run (weights, input size)."""
        return self.meta["backbone"]

    @property
    def dim(self) -> int:
        return int(self.target_mean.shape[0])

    def directions(self, features: np.ndarray) -> np.ndarray:
        """Unit directions ``(n, dim)`` from the image mean, for drawing ``features``."""
        h = (np.asarray(features, np.float32) - self.in_mean) / self.in_std
        for i, (w, b) in enumerate(self.layers):
            h = h @ w.T + b
            if i < len(self.layers) - 1:
                h = np.maximum(h, 0)
        return l2_normalize(h.astype(np.float32))

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """Predicted image features ``(n, dim)`` of drawing ``features`` (backbone features
        of :func:`cbir.data.sketch.normalise_drawing` drawings)."""
        return self.target_mean + self.radius * self.directions(features)

    def check_backbone(self, fingerprint: dict[str, Any], where: str) -> None:
        """Refuse an index of another backbone or input size (its features differ)."""
        want = self.backbone
        if dict(fingerprint) != dict(want):
            size = (want.get("preprocess") or {}).get("size")
            have = (fingerprint.get("preprocess") or {}).get("size")
            raise CbirError(
                f"{self.path}: this sketch model was trained on {want.get('backbone')} at size"
                f" {size}, {where} holds {fingerprint.get('backbone')} at size {have}; train one"
                f" for it: `cbir train --method sketch --size {have} ...`"
            )

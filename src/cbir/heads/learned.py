"""Learned heads: a small network on backbone features, saved as one checkpoint file.

Every trained model (deep hashing, metric learning, unsupervised codes) reduces to the
same thing at search time: standardise the 1280-d backbone features with the training
set's statistics, run an MLP (:class:`Head`, no hidden layer for LSH/ITQ), and either
take ``sign`` (binary codes, packed as faiss packs them) or L2-normalise (float
embeddings for cosine search). The checkpoint holds the layer sizes, the weights, the
input statistics and the backbone fingerprint, so an index built with it refuses
features from another backbone.

A run trained with ``--finetune`` also has the fine-tuned backbone's state dict
(``backbone.pt`` beside ``model.pt``; ``backbone-<digest>.pt`` in an index directory):
the checkpoint's backbone fingerprint carries that file's digest, and indexing or
evaluating with the run embeds with that backbone (its own cached ONNX export).
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cbir.codes.registry import code_kind
from cbir.errors import CbirError
from cbir.heads.base import (
    apply_weighting,
    collection_mean,
    l2_normalize,
    read_fitted_array,
    spectral_weighting,
    write_fitted_array,
)
from cbir.heads.head import Head
from cbir.heads.residual import build_head
from cbir.heads.vsepp import encode_texts, text_fingerprint
from cbir.utils import atomic_write_bytes, sha256_file

__all__ = ["BACKBONE_FILE", "CHECKPOINT", "FORMAT", "Head", "LearnedTransform", "load_checkpoint"]

FORMAT = "cbir-model-1"
CHECKPOINT = "model.pt"
BACKBONE_FILE = "backbone.pt"


def save_checkpoint(path: str | os.PathLike[str], ckpt: dict[str, Any]) -> None:
    """Write a checkpoint atomically."""
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint (tensors and plain values only: ``weights_only``)."""
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT
    if not p.exists():
        raise CbirError(
            f"{path}: no trained model here (expected {CHECKPOINT}; train one with `cbir train`)"
        )
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CbirError(f"{p}: not a cbir model checkpoint ({e.__class__.__name__}: {e})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CbirError(f"{p}: not a cbir model checkpoint (format {FORMAT} expected)")
    return ckpt


def file_digest(path: Path) -> str:
    return sha256_file(path)[:16]


class LearnedTransform:
    """Backbone features -> codes or embeddings of a trained head (see module doc).

    Args:
        ckpt: a checkpoint dict (:func:`load_checkpoint`).
        path: the checkpoint file it came from.
    """

    def __init__(self, ckpt: dict[str, Any], path: Path | None = None) -> None:
        if "sketch" in ckpt:  # cbir.heads.sketch: it maps drawings, not indexed images
            raise CbirError(
                f"{path}: a sketch model maps drawings, not images; search an index with it:"
                " `cbir search INDEX --sketch DRAWING --model RUN_DIR`"
            )
        self.ckpt = ckpt
        self.path = path
        self.kind: str = ckpt["kind"]
        self.dim: int = int(ckpt["head"]["out_dim"])
        self.method: str = ckpt["method"]
        self.head = build_head(ckpt["head"])
        self.head.load_state_dict(ckpt["state"])
        self.head.eval()
        #: the training images' mean; with ``center == "collection"`` in the checkpoint's
        #: input the head instead centres on the mean of the collection it indexes
        #: (:meth:`fit`, as the frozen backbone's centring), recorded in the spec
        self.train_mean = ckpt["input"]["mean"].float()
        self.center = ckpt["input"].get("center") == "collection"
        self.mean: torch.Tensor | None = None if self.center else self.train_mean
        self.fitted: dict[str, Any] | None = None
        self.std = ckpt["input"]["std"].float()
        #: the collection's spectral weighting of the outputs (``--spectral``; needs the
        #: collection centring): its power, the fitted map (the outputs' mean row, then
        #: the matrix; :func:`cbir.heads.base.spectral_weighting`) and its file's record
        self.spectral = float(ckpt["input"].get("spectral", 0.0)) if self.center else 0.0
        #: ``--reduce collection``: the embedding dimension the head's (feature-space)
        #: outputs are reduced to, on the collection's principal axes fitted with the mean
        #: (the spectral map keeps that many axes); None: the head's own dimension
        self.reduce: int | None = (
            (int(ckpt["input"].get("reduce") or 0) or None) if self.center else None
        )
        if self.reduce:
            self.dim = self.reduce
        #: a map fitted on the collection's outputs applies (``--spectral`` or ``--reduce``)
        self.maps_outputs = bool(self.spectral or self.reduce)
        self.spectral_map: np.ndarray | None = None
        self.spectral_file: dict[str, str] | None = None
        self.root: Path | None = None
        self.digest = file_digest(path) if path is not None else None
        # a joint image-text model (VSE++, cbir.heads.vsepp) also carries its text head
        self.text_head: Head | None = None
        if "text_head" in ckpt:
            self.text_head = Head(**ckpt["text_head"])
            self.text_head.load_state_dict(ckpt["text_state"])
            self.text_head.eval()
            self.text_mean = ckpt["text_input"]["mean"].float()
            self.text_std = ckpt["text_input"]["std"].float()

    @classmethod
    def from_path(cls, path: str | os.PathLike[str]) -> LearnedTransform:
        p = Path(path)
        p = p / CHECKPOINT if p.is_dir() else p
        return cls(load_checkpoint(p), p)

    @property
    def backbone(self) -> dict[str, Any]:
        """The fingerprint of the backbone the head was trained on."""
        return self.ckpt["backbone"]

    @property
    def finetuned(self) -> bool:
        """Whether the run fine-tuned the backbone (its weights are a file of the run)."""
        return bool(self.ckpt.get("backbone_file"))

    @property
    def backbone_weights(self) -> Path | None:
        """The fine-tuned backbone's weights file (None: the ImageNet backbone).

        Looked up beside the checkpoint: the run's ``backbone.pt``, or
        ``backbone-<digest>.pt`` in an index directory; its digest must match.
        """
        if not self.finetuned:
            return None
        want = self.backbone["weights"]
        base = self.path.parent if self.path is not None else Path(".")
        for name in (self.ckpt["backbone_file"], f"backbone-{want}.pt"):
            p = base / name
            if p.exists() and sha256_file(p)[:12] == want:
                return p
        raise CbirError(
            f"{self.path}: the fine-tuned backbone weights (digest {want}) are not beside the"
            f" checkpoint (expected {base / self.ckpt['backbone_file']}); copy the whole run"
            " directory, or train it again"
        )

    @torch.no_grad()
    def head_outputs(self, features: np.ndarray, batch: int = 8192) -> np.ndarray:
        """The head's own outputs, before the collection's spectral map."""
        x = torch.from_numpy(np.array(features, dtype=np.float32))
        mean = self.train_mean if self.mean is None else self.mean  # not fitted: training mean
        out = []
        for i in range(0, len(x), batch):
            out.append(self.head((x[i : i + batch] - mean) / self.std))
        if not out:
            return np.zeros((0, int(self.ckpt["head"]["out_dim"])), np.float32)
        return torch.cat(out).numpy()

    def outputs(self, features: np.ndarray, batch: int = 8192) -> np.ndarray:
        """Real-valued head outputs ``(n, dim)`` (before sign / normalisation)."""
        if self.reduce and self.spectral_map is None:
            raise CbirError(
                "this model reduces its outputs on the principal axes of the collection it"
                " embeds (--reduce collection); they are fitted when an index is built: use"
                " `cbir index FOLDER --index INDEX --model RUN_DIR` (or `--refit-center`)"
            )
        u = self.head_outputs(features, batch)
        if self.spectral_map is not None:  # fitted with the mean (not fitted: unweighted)
            u = apply_weighting(u, self.spectral_map)
        return u

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """Codes of ``features``: unit vectors, packed bits or sparse CSR rows (cbir.codes)."""
        return code_kind(self.kind).encode(self, features)

    def float_view(self, features: np.ndarray) -> np.ndarray:
        """Unit vectors of the real outputs (re-ranking a Hamming shortlist); the dense
        rows of a sparse model's codes."""
        return code_kind(self.kind).float_view(self, features)

    @property
    def joint(self) -> bool:
        """True for a joint image-text model, whose text head embeds captions."""
        return self.text_head is not None

    @torch.no_grad()
    def text_vectors(self, sentence_embeddings: np.ndarray) -> np.ndarray:
        """Unit vectors in the joint space of sentence-encoder embeddings ``(n, 384)``."""
        if self.text_head is None:
            raise CbirError(
                f"{self.path}: a {self.method} model has no text side; train one with --method vsepp"
            )
        t = torch.from_numpy(np.array(sentence_embeddings, dtype=np.float32))
        return l2_normalize(self.text_head((t - self.text_mean) / self.text_std).numpy())

    @torch.no_grad()
    def text_codes(self, sentence_embeddings: np.ndarray) -> np.ndarray:
        """Packed binary codes of sentence-encoder embeddings (a cross-modal hashing model,
        DCMH: the signs of the text head's outputs, packed as the image codes are)."""
        if self.text_head is None:
            raise CbirError(f"{self.path}: a {self.method} model has no text side")
        from cbir.codes.bits import pack_bits

        t = torch.from_numpy(np.array(sentence_embeddings, dtype=np.float32))
        return pack_bits(self.text_head((t - self.text_mean) / self.text_std).numpy())

    def text_queries(self, sentence_embeddings: np.ndarray) -> np.ndarray:
        """What the index searches for sentence embeddings: unit vectors (a float joint
        space) or packed codes (binary)."""
        if self.kind == "binary":
            return self.text_codes(sentence_embeddings)
        return self.text_vectors(sentence_embeddings)

    def encode_text(self, texts: list[str] | tuple[str, ...]) -> np.ndarray:
        """Queries in the joint space of ``texts`` (sentence encoder, then text head): unit
        vectors, or packed codes for a binary (DCMH) model."""
        want = self.ckpt.get("text_encoder", {})
        have = text_fingerprint()
        if want.get("weights") not in (None, have["weights"]):
            raise CbirError(
                f"{self.path}: trained on sentence encoder {want.get('model')} weights {want.get('weights')},"
                f" this cbir has {have['model']} {have['weights']}; retrain the model"
            )
        return self.text_queries(encode_texts(texts))

    def fit(self, features: np.ndarray) -> None:
        """Centre on the mean of ``features`` (the collection) if the run asked for it and
        it is not fitted yet; otherwise nothing to fit: the head was trained."""
        if self.center and self.mean is None and len(features):
            m, self.fitted = collection_mean(features)
            self.mean = torch.from_numpy(m)
            if self.maps_outputs:  # on the head's outputs of the same collection
                self.spectral_map, self.spectral_file = None, None
                u = self.head_outputs(features)
                self.spectral_map = spectral_weighting(u, self.spectral, keep=self.reduce)
                self._write_spectral()

    def _write_spectral(self) -> None:
        if self.spectral_map is None or self.root is None or self.spectral_file is not None:
            return
        self.spectral_file = write_fitted_array(self.root, "spectral", self.spectral_map)

    def unfit(self) -> None:
        """Forget the collection mean (and spectral weighting), so the next :meth:`fit`
        computes them again."""
        if self.center:
            self.mean, self.fitted = None, None
            self.spectral_map, self.spectral_file = None, None

    def install(self, root: Path) -> None:
        """Copy the checkpoint into an index directory, so the index is self-contained."""
        if self.path is None or self.digest is None:
            raise CbirError("a learned model must come from a checkpoint file to be indexed")
        self.root = Path(root)
        self._write_spectral()
        copies = [(self.path, Path(root) / f"model-{self.digest}.pt")]
        weights = self.backbone_weights
        if weights is not None:
            copies.append((weights, Path(root) / f"backbone-{self.backbone['weights']}.pt"))
        for src, dst in copies:
            if not dst.exists():
                tmp = dst.with_name(f".{dst.name}.tmp")
                shutil.copyfile(src, tmp)
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(tmp, dst)

    def spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": "learned",
            "file": f"model-{self.digest}.pt",
            "digest": self.digest,
            "method": self.method,
            "code": self.kind,
            "dim": self.dim,
        }
        if self.text_head is not None:  # the index answers text queries (cbir.search.joint)
            out["text"] = self.ckpt.get("text_encoder", {}).get("model", "sentence encoder")
        if self.finetuned:  # codes of the fine-tuned backbone's features
            out["backbone_weights"] = self.backbone["weights"]
        if self.center:  # centred on the collection's mean, fitted when the index was built
            out["center"] = "collection"
            if self.mean is not None:
                out["mean"] = [float(v) for v in self.mean]
                if self.fitted:
                    out["fitted"] = dict(self.fitted)
            if self.spectral:
                out["spectral"] = self.spectral
            if self.reduce:
                out["reduce"] = self.reduce
            if self.maps_outputs and self.spectral_file is not None:
                out["spectral_map"] = dict(self.spectral_file)
        return out


def load_learned(spec: dict[str, Any], root: Path | None) -> LearnedTransform:
    """The learned transform of an index's spec (its checkpoint copy in ``root``)."""
    if root is None:
        raise CbirError("a learned transform needs its index directory")
    path = Path(root) / spec["file"]
    t = LearnedTransform(load_checkpoint(path), path)
    if t.digest != spec["digest"]:
        raise CbirError(
            f"{path}: model file does not match the index (digest {t.digest} != {spec['digest']})"
        )
    if t.center and spec.get("mean") is not None:  # the collection mean the index fitted
        t.mean = torch.tensor(spec["mean"], dtype=torch.float32)
        t.fitted = spec.get("fitted")
    t.root = Path(root)
    if t.maps_outputs and t.mean is not None and spec.get("spectral_map"):
        t.spectral_file = dict(spec["spectral_map"])
        t.spectral_map = read_fitted_array(root, t.spectral_file, "spectral weighting")
    return t

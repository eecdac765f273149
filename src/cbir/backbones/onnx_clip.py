"""``onnx-clip:DIR``: a CLIP-type image-text model exported to ONNX (image and text towers).

CLIP (Radford et al., "Learning Transferable Visual Models From Natural Language
Supervision", ICML 2021) embeds images and texts in one space, so a text query is compared
with the indexed images directly (``cbir search --text``). ``DIR`` holds the layout that
ONNX exports of CLIP / open_clip models use:

- ``image.onnx`` (or ``visual.onnx``, ``vision_model.onnx``): one float input ``(n, 3, H, W)``
  of pixels scaled to [0, 1] and normalised per channel, output ``(n, dim)`` image embeddings.
  Normalisation: the model's ``metadata_props`` (``mean``, ``std``), else CLIP's
  (0.4815, 0.4578, 0.4082) / (0.2686, 0.2613, 0.2758); see :mod:`cbir.backbones.onnx_file`.
- ``text.onnx`` (or ``textual.onnx``, ``text_model.onnx``): input token ids ``(n, L)``
  (int64 or int32) and, if it has a second input, the attention mask; output ``(n, dim)``
  text embeddings.
- ``tokenizer.json``: a Hugging Face ``tokenizers`` file (every CLIP model on the Hub ships
  one). Texts are padded (with the tokenizer's pad id, else 0) and truncated to the text
  model's declared length, else 77 (CLIP's context length).

The fingerprint holds the sha256 of all three files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from cbir.backbones.onnx_file import OnnxFileBackbone
from cbir.backbones.session import cpu_session
from cbir.errors import CbirError
from cbir.utils import sha256_file

#: CLIP's pixel normalisation (open_clip's OPENAI_DATASET_MEAN / _STD).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CONTEXT_LENGTH = 77
IMAGE_NAMES = ("image.onnx", "visual.onnx", "vision_model.onnx")
TEXT_NAMES = ("text.onnx", "textual.onnx", "text_model.onnx")
TOKENIZER = "tokenizer.json"
MAX_TEXTS = 256


def _find(root: Path, names: tuple[str, ...], what: str) -> Path:
    for n in names:
        if (root / n).is_file():
            return root / n
    raise CbirError(
        f"{root}: no {what} model ({' or '.join(names)}); onnx-clip:DIR names a folder with"
        f" the image model, the text model and {TOKENIZER} (docs/backbones.md)"
    )


class OnnxClipBackbone(OnnxFileBackbone):
    """The image tower runs as :class:`OnnxFileBackbone`; :meth:`embed_text` runs the text
    tower on the tokenizer's ids.

    Args:
        path: the folder (see the module doc).
        size, mode, mean, std, output, threads: as :class:`OnnxFileBackbone` (mean and std
            default to CLIP's).
    """

    name = "onnx-clip"
    default_mean = CLIP_MEAN
    default_std = CLIP_STD
    resample = "bicubic"  # CLIP's preprocessing resizes bicubic

    def __init__(
        self,
        path: str | os.PathLike[str],
        size: int | None = None,
        mode: str = "crop",
        mean: Any = None,
        std: Any = None,
        output: str | None = None,
        threads: int | None = None,
    ) -> None:
        root = Path(os.path.expanduser(os.fspath(path)))
        if not root.is_dir():
            raise CbirError(
                f"{path}: no such folder (onnx-clip:DIR names a folder holding image.onnx,"
                f" text.onnx and {TOKENIZER})"
            )
        image = _find(root, IMAGE_NAMES, "image")
        text = _find(root, TEXT_NAMES, "text")
        tok = root / TOKENIZER
        if not tok.is_file():
            raise CbirError(f"{root}: no {TOKENIZER} (the text model's Hugging Face tokenizer)")
        super().__init__(
            image, size=size, mode=mode, mean=mean, std=std, output=output, threads=threads
        )
        self.root = root.resolve()
        try:
            from tokenizers import Tokenizer
        except ImportError as e:
            raise CbirError(
                f"onnx-clip needs the tokenizers package: pip install 'cbir[onnx-clip]' ({e})"
            ) from None
        try:
            self.tokenizer = Tokenizer.from_file(str(tok))
        except Exception as e:  # tokenizers raises its own exception type
            raise CbirError(f"{tok}: not a Hugging Face tokenizer file ({e})") from None
        try:
            self.text_session = cpu_session(text, threads)
        except Exception as e:
            msg = str(e).splitlines()[0][:300] if str(e) else ""
            raise CbirError(f"{text}: not an ONNX model onnxruntime can run ({msg})") from None
        ins = self.text_session.get_inputs()
        if not 1 <= len(ins) <= 2 or any(len(i.shape) != 2 for i in ins):
            got = ", ".join(f"{i.name} {i.type} {i.shape}" for i in ins)
            raise CbirError(f"{text}: expected inputs token ids (n, L) [+ mask], got {got}")
        self._text_inputs = [(i.name, np.int32 if "int32" in i.type else np.int64) for i in ins]
        length = ins[0].shape[1]
        self.context_length = length if isinstance(length, int) else CONTEXT_LENGTH
        pad = self.tokenizer.padding
        self.pad_id = int(pad["pad_id"]) if pad else 0
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.context_length)
        self.text_sha256 = sha256_file(text)
        self.tokenizer_sha256 = sha256_file(tok)
        self.text_output = self.text_session.get_outputs()[0].name
        got = self.embed_text(["a photo"]).shape[1]
        if got != self.dim:
            raise CbirError(
                f"{root}: the text model gives {got}-d embeddings, the image model {self.dim}-d"
            )

    @property
    def fingerprint(self) -> dict[str, Any]:
        """The image model's (:class:`OnnxFileBackbone`) plus the text model and tokenizer."""
        fp = super().fingerprint
        fp["text"] = {
            "sha256": self.text_sha256,
            "tokenizer": self.tokenizer_sha256,
            "context_length": self.context_length,
        }
        return fp

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids, attention mask), each ``(n, context_length)``."""
        ids = np.full((len(texts), self.context_length), self.pad_id, np.int64)
        mask = np.zeros_like(ids)
        for i, enc in enumerate(self.tokenizer.encode_batch(list(texts))):
            n = len(enc.ids)
            ids[i, :n] = enc.ids
            mask[i, :n] = 1
        return ids, mask

    def embed_text(self, texts: list[str]) -> np.ndarray:
        """Text embeddings ``(n, dim)`` float32, in the image embeddings' space."""
        texts = [str(t) for t in texts]
        if len(texts) > MAX_TEXTS:
            parts = [
                self.embed_text(texts[i : i + MAX_TEXTS]) for i in range(0, len(texts), MAX_TEXTS)
            ]
            return np.concatenate(parts)
        ids, mask = self.tokenize(texts)
        feeds = {
            name: (ids if j == 0 else mask).astype(dt)
            for j, (name, dt) in enumerate(self._text_inputs)
        }
        (out,) = self.text_session.run([self.text_output], feeds)
        return np.ascontiguousarray(np.asarray(out, np.float32).reshape(len(texts), -1))

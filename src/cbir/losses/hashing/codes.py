"""Binary codes: +-1 signs, packing in faiss ``IndexBinary`` bit order, Hamming distances.

faiss stores bit ``j`` of a code in byte ``j // 8`` at position ``j % 8`` counting from the
least significant bit (``faiss.real_to_binary``), i.e. ``np.packbits(..., bitorder="little")``
with bit = 1 for +1 and 0 for -1.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from cbir.codes.bits import hamming, pack_bits, unpack_bits


def _numpy(x: np.ndarray | Tensor) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def sign_codes(u: np.ndarray | Tensor) -> np.ndarray:
    """``(n, bits)`` int8 codes in {-1, +1}: the sign of ``u``, with 0 mapped to +1."""
    return np.where(_numpy(u) >= 0, 1, -1).astype(np.int8)


def pack_codes(pm1: np.ndarray | Tensor) -> np.ndarray:
    """Pack ``(n, bits)`` +-1 codes (``bits`` a multiple of 8) into ``(n, bits // 8)`` uint8."""
    x = _numpy(pm1)
    if x.ndim != 2 or x.shape[1] % 8:
        raise ValueError(f"codes must be (n, bits) with bits a multiple of 8, got {x.shape}")
    return pack_bits(np.where(x > 0, 1, -1))


def unpack_codes(packed: np.ndarray, bits: int | None = None) -> np.ndarray:
    """Inverse of :func:`pack_codes`: ``(n, bits)`` int8 +-1 (``bits`` defaults to 8 * bytes)."""
    bits01 = unpack_bits(packed, bits)
    return (bits01.astype(np.int8) * 2 - 1).astype(np.int8)


def hamming_distances(a_packed: np.ndarray, b_packed: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """``(len(a), len(b))`` int32 Hamming distances between packed codes (popcount of XOR)."""
    a, b = np.asarray(a_packed), np.asarray(b_packed)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"packed codes of different shapes: {a.shape} and {b.shape}")
    return hamming(a.astype(np.uint8, copy=False), b.astype(np.uint8, copy=False), chunk)


def hamming_distances_torch(a_pm1: Tensor, b_pm1: Tensor) -> Tensor:
    """Hamming distances between +-1 tensors: ``(bits - a @ b.T) / 2`` (for training logs)."""
    bits = a_pm1.shape[1]
    return ((bits - a_pm1.float() @ b_pm1.float().t()) / 2).round().to(torch.int32)

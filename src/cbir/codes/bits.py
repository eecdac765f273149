"""Binary codes in one place: packing, popcount and Hamming distances.

Codes are packed as faiss ``IndexBinary`` packs them (``faiss.real_to_binary``): ``uint8``
rows of ``bits // 8`` bytes, bit ``j`` in byte ``j // 8`` at position ``j % 8`` counting
from the least significant bit, i.e. ``np.packbits(u >= 0, axis=1, bitorder="little")``.
Internally distances are computed on little-endian ``uint64`` words (XOR, popcount).
"""

from __future__ import annotations

from typing import Any

import numpy as np

try:  # optional accelerator for the multi-index hashing kernels (cbir.index.mih_kernels)
    import numba
    from numba import types
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - exercised where numba is absent
    numba = None

__all__ = [
    "HAVE_NUMBA",
    "as_words",
    "check_codes",
    "hamming",
    "hamming_words",
    "pack_bits",
    "pack_words",
    "popcount",
    "unpack_bits",
]

HAVE_NUMBA = numba is not None

if hasattr(np, "bitwise_count"):  # numpy >= 2.0

    def popcount(x: np.ndarray) -> np.ndarray:
        """Number of set bits of each element of an unsigned integer array (uint8 result)."""
        return np.bitwise_count(x)

else:  # pragma: no cover - numpy < 2.0
    _POP16 = np.array([bin(i).count("1") for i in range(1 << 16)], dtype=np.uint8)

    def popcount(x: np.ndarray) -> np.ndarray:
        """Number of set bits of each element of an unsigned integer array (uint8 result)."""
        x = np.asarray(x)
        if x.dtype == np.uint8:
            return _POP16[x.astype(np.intp)]
        x = x.astype(np.uint64)
        m = np.uint64(0xFFFF)
        out = _POP16[(x & m).astype(np.intp)]
        for s in (16, 32, 48):
            out = out + _POP16[((x >> np.uint64(s)) & m).astype(np.intp)]
        return out


if HAVE_NUMBA:

    @intrinsic
    def popc(typingctx: Any, x: Any) -> Any:
        """Hardware popcount of one integer inside numba code (LLVM ctpop)."""
        if not isinstance(x, types.Integer):
            return None

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            return builder.ctpop(args[0])

        return x(x), codegen


def pack_bits(u: Any) -> np.ndarray:
    """``u >= 0`` (real outputs, or +-1 codes) as packed uint8 rows in faiss bit order."""
    if hasattr(u, "detach"):  # a torch tensor
        u = u.detach().cpu().numpy()
    return np.packbits(np.asarray(u) >= 0, axis=1, bitorder="little")


def unpack_bits(packed: np.ndarray, bits: int | None = None) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``(n, bits)`` uint8 rows of 0/1 (``bits``: 8 * bytes)."""
    return np.unpackbits(np.asarray(packed, np.uint8), axis=1, count=bits, bitorder="little")


def check_codes(codes: np.ndarray, bits: int, what: str = "codes") -> np.ndarray:
    """``codes`` as a 2-d uint8 array of ``bits // 8`` columns, or ValueError."""
    codes = np.asarray(codes)
    if codes.ndim == 1:
        codes = codes[None, :]
    if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] != bits // 8:
        raise ValueError(
            f"{what} must be packed uint8 rows of {bits // 8} bytes ({bits} bits), "
            f"got dtype {codes.dtype} and shape {codes.shape}"
        )
    return codes


def pack_words(codes: np.ndarray) -> np.ndarray:
    """Packed ``uint8`` rows -> ``(n, ceil(nbytes/8))`` ``uint64`` words (zero padded)."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    n, nbytes = codes.shape
    nwords = max(1, -(-nbytes // 8))
    if nbytes != nwords * 8:
        padded = np.zeros((n, nwords * 8), dtype=np.uint8)
        padded[:, :nbytes] = codes
        codes = padded
    return codes.view("<u8").astype(np.uint64, copy=False).reshape(n, nwords)


def as_words(codes: np.ndarray) -> np.ndarray:
    """Packed uint8 codes as uint64 words, or ValueError for anything else."""
    codes = np.asarray(codes)
    if codes.dtype != np.uint8 or codes.ndim != 2:
        raise ValueError(
            f"binary codes must be a 2-D uint8 array (packed bits, faiss IndexBinary "
            f"layout), got {codes.dtype} with shape {codes.shape}; pack them with np.packbits"
        )
    return pack_words(codes)


def hamming_words(q: np.ndarray, db: np.ndarray, bits: int) -> np.ndarray:
    """``(len(q), len(db))`` distances between uint64-word codes, one word at a time.

    uint8 up to 248 bits, else uint16 (room for a sentinel at ``bits + 1``).
    """
    dtype = np.uint8 if bits <= 248 else np.uint16
    out = np.zeros((len(q), len(db)), dtype)
    for w in range(q.shape[1]):
        out += popcount(q[:, w, None] ^ db[None, :, w])
    return out


def hamming_to(words: np.ndarray, qw: np.ndarray) -> np.ndarray:
    """Hamming distances (int64) between rows of ``words`` (n, W) and one query (W,)."""
    if words.shape[1] == 1:
        return popcount(words[:, 0] ^ qw[0]).astype(np.int64)
    return popcount(words ^ qw).sum(axis=1, dtype=np.int64)


def hamming(a: np.ndarray, b: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """``(len(a), len(b))`` int32 Hamming distances between packed uint8 codes."""
    wa, wb = as_words(a), as_words(b)
    if wa.shape[1] != wb.shape[1] or np.asarray(a).shape[1] != np.asarray(b).shape[1]:
        raise ValueError(f"packed codes of different shapes: {np.shape(a)} and {np.shape(b)}")
    out = np.empty((len(wa), len(wb)), np.int32)
    bits = 64 * wa.shape[1]
    for s in range(0, len(wa), chunk):
        out[s : s + chunk] = hamming_words(wa[s : s + chunk], wb, bits)
    return out

"""Bit packing, popcount and Hamming distances: the one copy, against plain definitions."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from cbir.codes.bits import (
    as_words,
    check_codes,
    hamming,
    hamming_to,
    hamming_words,
    pack_bits,
    popcount,
    unpack_bits,
)


def test_pack_bits_is_faiss_bit_order():
    rng = np.random.default_rng(0)
    u = rng.standard_normal((7, 48)).astype(np.float32)
    packed = pack_bits(u)
    assert packed.shape == (7, 6) and packed.dtype == np.uint8
    want = np.zeros((7, 6), np.uint8)
    faiss.real_to_binary(7 * 48, faiss.swig_ptr(np.ascontiguousarray(u)), faiss.swig_ptr(want))
    # faiss: bit j is set when u[j] > 0; ours when u[j] >= 0 (no exact zeros here)
    assert np.array_equal(packed, want)
    assert np.array_equal(unpack_bits(packed, 48), (u >= 0).astype(np.uint8))


def test_popcount_counts_bits():
    x8 = np.arange(256, dtype=np.uint8)
    assert popcount(x8).tolist() == [bin(i).count("1") for i in range(256)]
    x64 = np.array([0, 1, 2**63, 2**64 - 1, 0x0F0F0F0F0F0F0F0F], np.uint64)
    assert popcount(x64).astype(int).tolist() == [0, 1, 1, 64, 32]


@pytest.mark.parametrize("nbytes", [1, 3, 8, 12, 32])
def test_hamming_equals_brute_force(nbytes):
    rng = np.random.default_rng(nbytes)
    a = rng.integers(0, 256, (9, nbytes), dtype=np.uint8)
    b = rng.integers(0, 256, (13, nbytes), dtype=np.uint8)
    ua, ub = unpack_bits(a).astype(int), unpack_bits(b).astype(int)
    want = (ua[:, None, :] != ub[None, :, :]).sum(-1)
    got = hamming(a, b, chunk=4)
    assert got.dtype == np.int32 and np.array_equal(got, want)
    wa, wb = as_words(a), as_words(b)
    assert np.array_equal(hamming_words(wa, wb, nbytes * 8), want)
    assert np.array_equal(hamming_to(wb, wa[2]), want[2])


def test_bad_codes_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        as_words(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="8 bytes"):
        check_codes(np.zeros((2, 4), np.uint8), 64)
    with pytest.raises(ValueError, match="different shapes"):
        hamming(np.zeros((2, 4), np.uint8), np.zeros((2, 5), np.uint8))

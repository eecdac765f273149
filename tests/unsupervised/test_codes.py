"""Unsupervised binary codes: LSH, ITQ, the binary autoencoder."""

from __future__ import annotations

import numpy as np

from cbir.unsupervised import ITQ, LSH, BinaryAutoencoder


def _clusters(
    n: int = 600, dim: int = 32, k: int = 6, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, dim)) * 3
    y = rng.integers(0, k, n)
    return centres[y] + rng.standard_normal((n, dim)), y


def test_lsh_hamming_estimates_angle():
    rng = np.random.default_rng(1)
    a = rng.standard_normal(64)
    b = a + 0.8 * rng.standard_normal(64)
    lsh = LSH(4096, seed=0).fit(np.stack([a, b]))
    codes = lsh.transform(np.stack([a, b]))
    assert set(np.unique(codes)) <= {-1, 1} and codes.dtype == np.int8
    theta = np.arccos(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert abs((codes[0] != codes[1]).mean() - theta / np.pi) < 0.03
    again = LSH.from_state(lsh.state_dict()).transform(np.stack([a, b]))
    assert np.array_equal(codes, again)


def test_itq_rotation_lowers_quantisation_error_and_keeps_neighbours():
    x, y = _clusters()
    itq = ITQ(16, n_iter=50, seed=0).fit(x)
    assert itq.quantization_error(x) < itq.quantization_error(x, rotation=np.eye(16))
    assert all(b <= a + 1e-9 for a, b in zip(itq.errors_, itq.errors_[1:], strict=False))
    assert np.allclose(itq.rotation @ itq.rotation.T, np.eye(16), atol=1e-8)
    codes = itq.transform(x)
    d = (codes[:, None, :] != codes[None, :, :]).sum(-1)
    np.fill_diagonal(d, 999)
    assert (y[d.argmin(1)] == y).mean() > 0.9
    assert np.array_equal(ITQ.from_state(itq.state_dict()).transform(x), codes)


def test_autoencoder_codes_are_binary_deterministic_and_reconstruct():
    x, y = _clusters(n=400)
    a = BinaryAutoencoder(16, hidden=64).fit(x, epochs=30, seed=3)
    b = BinaryAutoencoder(16, hidden=64).fit(x, epochs=30, seed=3)
    ca, cb = a.transform(x), b.transform(x)
    assert np.array_equal(ca, cb) and set(np.unique(ca)) <= {-1, 1}
    assert a.history_[-1] < a.history_[0]
    assert a.reconstruction_error(x) < 1.0  # standardised data: predicting the mean gives 1.0
    d = (ca[:, None, :] != ca[None, :, :]).sum(-1)
    np.fill_diagonal(d, 999)
    assert (y[d.argmin(1)] == y).mean() > 0.8

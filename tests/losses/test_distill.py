"""The frozen-similarity distillation term on real Fashion-MNIST pixels: zero when the
learned similarities equal the frozen ones, positive otherwise, and its gradient pulls
the learned similarities towards the frozen ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cbir.losses.metric.distill import SimilarityDistillation, cosine_matrix
from tests.conftest import FASHION_ROOT, needs_fashion

pytestmark = needs_fashion


@pytest.fixture(scope="module")
def frozen() -> torch.Tensor:
    from cbir.data.idx import read_idx

    x = read_idx(FASHION_ROOT / "t10k-images-idx3-ubyte.gz")[:64].reshape(64, -1)
    x = torch.from_numpy(x.astype(np.float32) / 255.0)
    return x - x.mean(0)


def test_zero_when_the_similarities_are_the_frozen_ones(frozen):
    term = SimilarityDistillation(2.0)
    assert term(frozen, frozen).item() == pytest.approx(0.0, abs=1e-10)
    # any rotation and scaling keeps every cosine: still zero
    q, _ = torch.linalg.qr(torch.randn(784, 784, generator=torch.Generator().manual_seed(0)))
    assert term(3.0 * frozen @ q, frozen).item() == pytest.approx(0.0, abs=1e-8)


def test_positive_otherwise_and_weighted(frozen):
    proj = torch.randn(784, 16, generator=torch.Generator().manual_seed(1))
    learned = frozen @ proj
    one = SimilarityDistillation(1.0)(learned, frozen).item()
    assert one > 1e-3
    assert SimilarityDistillation(3.0)(learned, frozen).item() == pytest.approx(3 * one)
    assert SimilarityDistillation(0.0)(learned, frozen).item() == 0.0


def test_its_gradient_moves_the_learned_similarities_towards_the_frozen_ones(frozen):
    proj = torch.randn(784, 16, generator=torch.Generator().manual_seed(2), requires_grad=True)
    opt = torch.optim.Adam([proj], lr=1e-2)
    term = SimilarityDistillation(1.0)
    first = term(frozen @ proj, frozen).item()
    for _ in range(50):
        opt.zero_grad()
        term(frozen @ proj, frozen).backward()
        opt.step()
    last = term(frozen @ proj, frozen).item()
    assert last < 0.5 * first, (first, last)
    err = (cosine_matrix(frozen @ proj) - cosine_matrix(frozen)).abs().mean().item()
    assert err < 0.2

"""The SUBIC loss (cbir.losses.hashing.subic): its entropy terms and what they reward."""

from __future__ import annotations

import math

import torch

from cbir.codes.subic import block_softmax as np_block_softmax
from cbir.losses.hashing.subic import SUBIC, block_softmax


def test_entropy_terms_measure_one_hot_and_spread():
    loss = SUBIC(4 * 8, 3, k=8)
    uniform = torch.zeros(16, 32)
    _, mean_e, batch_e = loss.terms(uniform)
    assert math.isclose(float(mean_e), 1.0, rel_tol=1e-5)  # every block uniform: maximal
    assert math.isclose(float(batch_e), 1.0, rel_tol=1e-5)
    # one-hot blocks, every sample on the same index: mean and batch entropy both 0
    same = torch.full((16, 4, 8), -50.0)
    same[:, :, 0] = 50.0
    _, mean_e, batch_e = loss.terms(same.reshape(16, 32))
    assert float(mean_e) < 1e-6 and float(batch_e) < 1e-6
    # one-hot blocks spread evenly over the 8 indices: mean 0, batch maximal
    spread = torch.full((16, 4, 8), -50.0)
    spread[torch.arange(16), :, torch.arange(16) % 8] = 50.0
    _, mean_e, batch_e = loss.terms(spread.reshape(16, 32))
    assert float(mean_e) < 1e-6 and math.isclose(float(batch_e), 1.0, rel_tol=1e-5)


def test_block_softmax_matches_the_code_kinds_and_gradients_reach_the_classifier():
    u = torch.randn(10, 3 * 16, requires_grad=True)
    z = block_softmax(u, 16)
    assert torch.allclose(z.reshape(10, 3, 16).sum(2), torch.ones(10, 3))
    assert torch.allclose(z.detach(), torch.from_numpy(np_block_softmax(u.detach().numpy(), 16)))
    loss = SUBIC(48, 5, k=16)
    value = loss(u, torch.randint(0, 5, (10,)))
    value.backward()
    assert u.grad is not None and float(u.grad.abs().sum()) > 0
    assert loss.classifier.weight.grad is not None
    assert set(loss.last) == {"classification", "mean_entropy", "batch_entropy"}

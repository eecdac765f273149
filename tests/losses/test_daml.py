"""DAML (cbir.losses.metric.daml): the generator's and the metric's gradients go where
the paper's adversarial game sends them, the generator learns to make hard negatives, and
a short run on real Fashion-MNIST features improves the head over its initialisation."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from cbir.losses.metric import get_metric_loss
from cbir.losses.metric.daml import DAMLLoss
from tests.conftest import FASHION_SMALL, needs_fashion


def _batch(seed: int = 0, spread: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """64 points of 4 overlapping classes (many triplets violate the margin)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, 16, generator=g) * spread
    labels = torch.arange(64) % 4
    return centres[labels] + torch.randn(64, 16, generator=g), labels


def test_generator_and_metric_gradients_are_separate():
    torch.manual_seed(0)
    emb, labels = _batch()
    # the generator's terms alone (metric weight 0) never reach the embeddings
    loss = DAMLLoss(16, weight=0.0)
    e = emb.clone().requires_grad_(True)
    loss(e, labels).backward()
    assert e.grad is not None and float(e.grad.abs().sum()) == 0.0
    last = loss.generator.net[-1].weight.grad
    assert last is not None and float(last.abs().sum()) > 0  # the generator is trained
    # the metric's term never reaches the generator: its gradients do not depend on weight
    grads = []
    for w in (1.0, 100.0):
        torch.manual_seed(1)
        loss = DAMLLoss(16, weight=w)
        loss.generator.load_state_dict(DAMLLoss(16).generator.state_dict())
        e = emb.clone().requires_grad_(True)
        loss(e, labels).backward()
        assert float(e.grad.abs().sum()) > 0  # the metric's term trains the embeddings
        grads.append(loss.generator.net[-1].weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_generator_learns_hard_negatives():
    torch.manual_seed(0)
    emb, labels = _batch(2, spread=2.0)
    loss = get_metric_loss("daml", 16, 4)
    assert isinstance(loss, DAMLLoss)
    opt = torch.optim.Adam(loss.parameters(), lr=1e-2)
    y = F.normalize(emb, dim=1)
    a, p, n = loss.triplets(y, labels, None)
    before = (y[n] - y[a]).norm(dim=1).mean()
    for _ in range(100):
        opt.zero_grad()
        loss(emb, labels, (a, p, n)).backward()
        opt.step()
    with torch.no_grad():
        fake = loss.generator(y[a], y[p], y[n])
    after = (fake - y[a]).norm(dim=1).mean()
    assert float(after) < 0.8 * float(before)  # nearer the anchor than the real negative
    assert torch.allclose(fake.norm(dim=1), torch.ones(len(fake)), atol=1e-5)


@needs_fashion
def test_short_run_improves_over_init(tmp_path):
    from cbir.train.methods.supervised import MetricHead
    from cbir.train.trainer import load_data, make_config, train

    os.environ.setdefault("CBIR_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        small = {**FASHION_SMALL, "epochs": 2, "eval_every": 0, "tsne_points": 0}
        cfg = make_config(method="daml", dim=64, hidden=[], **small)
        data = load_data(cfg, progress=False)
        torch.manual_seed(cfg.seed)
        init = MetricHead(cfg, data, False).evaluate(None)
        res = train(cfg, tmp_path / "daml", progress=False, data=data)
    finally:
        torch.set_num_threads(threads)
    assert res["metrics"]["map@r"] > init["map@r"] + 0.05
    assert res["metrics"]["recall@1"] > 0.6
    with pytest.raises(TypeError):
        get_metric_loss("daml", 16, 4, no_such_option=1)

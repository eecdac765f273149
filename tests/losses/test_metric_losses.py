"""Metric-learning losses and miners on real data (scikit-learn's bundled 8x8 digits):
every loss trains, center loss matches a hand computation, miners return valid and
correct index tuples, the direction filter keeps exactly the triplets of the angle test."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from cbir.errors import CbirError
from cbir.losses.metric import (
    DEFAULT_MINERS,
    METRIC_LOSSES,
    MINERS,
    CenterLoss,
    SoftmaxCenterLoss,
    get_metric_loss,
    get_miner,
)
from cbir.samplers.direction import DirectionMiner, direction_cosines

TRIPLET_MINERS = (
    "direction-same",
    "batch-hard",
    "semi-hard",
    "all-triplets",
    "distance-weighted",
    "random-triplets",
    "direction",
)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """A real batch: 80 digit images (64 pixels each), 8 of each of the 10 classes,
    standardised."""
    d = load_digits()
    rng = np.random.default_rng(0)
    idx = np.concatenate(
        [rng.choice(np.flatnonzero(d.target == c), 8, replace=False) for c in range(10)]
    )
    x = d.data[idx].astype(np.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-3)
    return torch.from_numpy(x), torch.from_numpy(d.target[idx].astype(np.int64))


@pytest.mark.parametrize("name", list(METRIC_LOSSES))
def test_every_loss_gives_a_finite_value_and_gradient_and_trains(name, digits):
    x, y = digits
    torch.manual_seed(0)
    proj = torch.nn.Linear(64, 16)
    loss_fn = get_metric_loss(name, 16, 10)
    miner = get_miner(DEFAULT_MINERS[name]) if DEFAULT_MINERS[name] else None
    params = list(proj.parameters()) + [p for p in loss_fn.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2)
    values = []
    for step in range(30):
        u = proj(x)
        loss = loss_fn(u, y, None if miner is None else miner(u, y))
        opt.zero_grad()
        loss.backward()
        assert torch.isfinite(loss)
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in params)
        if step == 0:  # later steps may legitimately reach zero loss (every triplet satisfied)
            assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0
        opt.step()
        values.append(loss.item())
    assert values[-1] < values[0], (name, values[0], values[-1])
    if name in ("center", "proxy-anchor", "arcface", "normalized-softmax", "margin"):
        assert any(p.requires_grad for p in loss_fn.parameters()), (
            "its proxies/classifier must reach the optimiser"
        )


def test_loss_and_miner_names():
    assert {
        "contrastive",
        "triplet",
        "npair",
        "margin",
        "center",
        "proxy-anchor",
        "multi-similarity",
    } <= set(METRIC_LOSSES)
    assert {
        "batch-hard",
        "semi-hard",
        "all-triplets",
        "distance-weighted",
        "multi-similarity",
        "direction",
    } <= set(MINERS)
    assert get_metric_loss("Proxy_Anchor", 8, 3).proxies.shape == (3, 8)
    with pytest.raises(CbirError, match="known: contrastive"):
        get_metric_loss("arcfaces", 8, 3)
    with pytest.raises(CbirError, match="known: batch-hard"):
        get_miner("hardest")


# ------------------------------------------------------------------ center loss
X = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
Y = torch.tensor([0, 0, 1])
C = torch.tensor([[1.0, 1.0], [0.0, 0.0]])


def test_center_loss_value_gradient_and_update_on_a_worked_example():
    loss_fn = CenterLoss(2, 2, alpha=0.5)
    loss_fn.centers.copy_(C)
    x = X.clone().requires_grad_(True)
    loss = loss_fn(x, Y)
    # 1/2 ||x_i - c_yi||^2 = 1/2 * 1, 1/2 * (4 + 1), 1/2 * 4  -> mean 5/3
    assert loss.item() == pytest.approx(5 / 3)
    loss.backward()
    # d/dx_i = (x_i - c_yi) / batch (Eq. 3, mean over the batch)
    assert torch.allclose(x.grad, torch.tensor([[0.0, -1.0], [2.0, -1.0], [0.0, 2.0]]) / 3)
    # Eq. 4: class 0: delta = (2 c0 - (x0 + x1)) / 3 = (-2/3, 2/3); c0 - 0.5 delta = (4/3, 2/3)
    #        class 1: delta = (c1 - x2) / 2 = (0, -1);                c1 - 0.5 delta = (0, 1/2)
    assert torch.allclose(loss_fn.centers, torch.tensor([[4 / 3, 2 / 3], [0.0, 0.5]]))


def test_center_loss_centres_stay_put_in_eval_mode_and_converge_to_class_means():
    loss_fn = CenterLoss(2, 2, alpha=0.5)
    loss_fn.eval()
    loss_fn(X, Y)
    assert torch.equal(loss_fn.centers, torch.zeros(2, 2))
    loss_fn.train()
    for _ in range(60):
        loss_fn(X, Y)
    assert torch.allclose(loss_fn.centers, torch.tensor([[2.0, 0.0], [0.0, 2.0]]), atol=1e-5)


def test_softmax_center_loss_is_cross_entropy_plus_lambda_center():
    loss_fn = SoftmaxCenterLoss(2, 2, lambda_c=0.1, alpha=0.5)
    with torch.no_grad():
        loss_fn.classifier.weight.zero_()
        loss_fn.classifier.bias.copy_(torch.tensor([0.0, math.log(3.0)]))
    loss_fn.center.centers.copy_(C)
    x = X.clone().requires_grad_(True)
    loss = loss_fn(x, Y)
    # logits (0, log 3) for every sample: p = (1/4, 3/4); CE = log 4, log 4, log 4/3
    ce = (2 * math.log(4.0) + math.log(4 / 3)) / 3
    assert loss.item() == pytest.approx(ce + 0.1 * 5 / 3, rel=1e-6)
    loss.backward()
    # W = 0: the softmax term has no gradient w.r.t. x; the center term gives 0.1 (x - c) / 3
    assert torch.allclose(x.grad, 0.1 * torch.tensor([[0.0, -1.0], [2.0, -1.0], [0.0, 2.0]]) / 3)
    assert (
        loss_fn.classifier.weight.grad is not None
        and loss_fn.classifier.weight.grad.abs().sum() > 0
    )
    assert torch.allclose(loss_fn.center.centers, torch.tensor([[4 / 3, 2 / 3], [0.0, 0.5]]))


# ------------------------------------------------------------------ miners
@pytest.mark.parametrize("name", TRIPLET_MINERS)
def test_triplet_miners_return_valid_triplets(name, digits):
    x, y = digits
    a, p, n = get_miner(name)(torch.nn.functional.normalize(x[:, :16], dim=1), y)
    assert len(a) == len(p) == len(n) > 0
    assert torch.all(y[a] == y[p]) and torch.all(a != p) and torch.all(y[a] != y[n])


def test_multi_similarity_miner_returns_valid_pairs(digits):
    x, y = digits
    a1, p, a2, n = get_miner("multi-similarity")(x, y)
    assert len(a1) == len(p) > 0 and len(a2) == len(n) > 0
    assert torch.all(y[a1] == y[p]) and torch.all(a1 != p) and torch.all(y[a2] != y[n])


def test_batch_hard_takes_the_farthest_positive_and_nearest_negative(digits):
    x, y = digits
    e = torch.nn.functional.normalize(x, dim=1)
    a, p, n = get_miner("batch-hard")(e, y)
    d = torch.cdist(e, e)
    same = y[:, None] == y[None, :]
    assert torch.allclose(d[a, p], d.masked_fill(~same, -1)[a].amax(1))
    assert torch.allclose(d[a, n], d.masked_fill(same, 9)[a].amin(1))


def test_all_triplets_counts_every_triplet(digits):
    _, y = digits
    a, _, _ = get_miner("all-triplets")(torch.zeros(len(y), 2), y)
    sizes = np.bincount(y.numpy())
    assert len(a) == sum(s * (s - 1) * (len(y) - s) for s in sizes)  # 10 classes * 8 * 7 * 72


def test_random_triplets_one_per_anchor_and_seeded(digits):
    x, y = digits
    t1 = get_miner("random-triplets", generator=torch.Generator().manual_seed(1))(x, y)
    t2 = get_miner("random-triplets", generator=torch.Generator().manual_seed(1))(x, y)
    t3 = get_miner("random-triplets", generator=torch.Generator().manual_seed(2))(x, y)
    assert torch.equal(t1[0], torch.arange(len(y)))
    assert all(torch.equal(u, v) for u, v in zip(t1, t2, strict=True))
    assert not torch.equal(t1[2], t3[2])


def test_as_sampled_reads_interleaved_triplets():
    a, p, n = get_miner("as-sampled")(torch.zeros(9, 2), torch.tensor([0, 0, 1] * 3))
    assert a.tolist() == [0, 3, 6] and p.tolist() == [1, 4, 7] and n.tolist() == [2, 5, 8]


# ------------------------------------------------------------------ direction condition
# Class 0: a0 = (0, 0), a1 = (2, 0). Class 1: b0 = (-1, 0.5), b1 = (1, 1), b2 = (0, -1).
def triplets(t: tuple[torch.Tensor, ...]) -> set[tuple[int, int, int]]:
    return set(zip(*(v.tolist() for v in t), strict=True))


PTS = torch.tensor([[0.0, 0.0], [2.0, 0.0], [-1.0, 0.5], [1.0, 1.0], [0.0, -1.0]])
LAB = torch.tensor([0, 0, 1, 1, 1])


def test_direction_filter_keeps_exactly_the_triplets_passing_the_angle_test():
    a, p, n = DirectionMiner(side="opposite", normalize=False)(PTS, LAB)
    kept = triplets((a, p, n))
    # Anchor 0 with positive 1 (direction +x): negative 2 lies at -x (kept), 3 at +x (dropped),
    # 4 straight down (cos = 0, dropped: the test is strict).
    assert (0, 1, 2) in kept and (0, 1, 3) not in kept and (0, 1, 4) not in kept
    # Anchor 1 with positive 0 (direction -x): every negative has x - 2 < 0, same side: none kept.
    assert not any(t[:2] == (1, 0) for t in kept)
    # Anchor 3 = (1, 1), positive 2 (direction (-2, -0.5)), negative 1 (direction (1, -1)): kept;
    # anchor 4 = (0, -1), positive 2 (direction (-1, 1.5)), negative 1 (direction (2, 1)): kept.
    assert kept == {(0, 1, 2), (3, 2, 1), (4, 2, 1)}
    # The same by a plain loop over all 18 triplets of the batch.
    expected = set()
    for ai in range(5):
        for pi in range(5):
            for ni in range(5):
                if ai != pi and LAB[ai] == LAB[pi] and LAB[ni] != LAB[ai]:
                    vp, vn = (PTS[pi] - PTS[ai]).numpy(), (PTS[ni] - PTS[ai]).numpy()
                    if float(np.dot(vp, vn)) < 0:
                        expected.add((ai, pi, ni))
    assert kept == expected

    same = DirectionMiner(side="same", normalize=False)(PTS, LAB)
    kept_same = triplets(same)
    assert (0, 1, 3) in kept_same and (0, 1, 2) not in kept_same and (0, 1, 4) not in kept_same
    assert not kept & kept_same and len(kept_same) == 18 - 3 - 1  # (0, 1, 4) has cos = 0
    assert triplets(get_miner("direction-same", normalize=False)(PTS, LAB)) == kept_same


def test_direction_cosines_on_the_unit_circle_and_through_get_miner():
    ang = torch.tensor([0.0, 0.5, math.pi, 1.0])
    pts = torch.stack([ang.cos(), ang.sin()], 1)
    a, p, n = torch.tensor([0, 0]), torch.tensor([1, 1]), torch.tensor([2, 3])
    cos = direction_cosines(pts, a, p, n)
    vp, vn2, vn3 = pts[1] - pts[0], pts[2] - pts[0], pts[3] - pts[0]
    assert torch.allclose(
        cos, torch.stack([vp @ vn2 / (vp.norm() * vn2.norm()), vp @ vn3 / (vp.norm() * vn3.norm())])
    )
    lab = torch.tensor([0, 0, 1, 1])
    got = get_miner("direction")(pts * 5.0, lab)  # normalised first: scale does not matter
    trip = triplets(got)
    assert trip == {t for t in [(0, 1, 2), (0, 1, 3), (1, 0, 2), (1, 0, 3), (2, 3, 0), (2, 3, 1), (3, 2, 0), (3, 2, 1)]
                    if float(direction_cosines(pts, *(torch.tensor([i]) for i in t))) < 0}  # fmt: skip
    filtered = get_miner("direction", base="batch-hard")(pts, lab)
    assert len(filtered[0]) <= 4

"""Each sampler's defining property, on real labels and features (scikit-learn's bundled
8x8 digits): coverage, weights, hard-negative and cluster choices, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from cbir.errors import CbirError
from cbir.losses.metric import get_metric_loss
from cbir.samplers import SAMPLERS, TRIPLET_SAMPLERS, make_sampler, per_sample_losses


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """Standardised pixels and labels of 1,797 real digit images (10 classes, 174-183 each)."""
    d = load_digits()
    x = d.data.astype(np.float32)
    return (x - x.mean(0)) / (x.std(0) + 1e-3), d.target.astype(np.int64)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ------------------------------------------------------------------ all samplers
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_valid_batches_and_same_seed_same_batches(name, digits):
    _, y = digits
    s = make_sampler(name, y, 64, seed=3)
    e1 = [b.copy() for b in s.epoch(1)]
    again = [b.copy() for b in make_sampler(name, y, 64, seed=3).epoch(1)]
    other_seed = [b.copy() for b in make_sampler(name, y, 64, seed=4).epoch(1)]
    e2 = [b.copy() for b in s.epoch(2)]
    assert len(e1) in (len(y) // 64, -(-len(y) // 64))
    assert all(b.dtype.kind == "i" and b.min() >= 0 and b.max() < len(y) for b in e1)
    assert all(len(b) == (63 if name in TRIPLET_SAMPLERS else 64) for b in e1[:-1])
    assert all(np.array_equal(a, b) for a, b in zip(e1, again, strict=True))
    assert not np.array_equal(e1[0], other_seed[0])
    assert not np.array_equal(e1[0], e2[0])


def test_unknown_names_and_direction_point_to_the_fix(digits):
    _, y = digits
    with pytest.raises(CbirError, match="--miner direction"):
        make_sampler("direction", y, 64)
    with pytest.raises(CbirError, match="known: random"):
        make_sampler("hardest", y, 64)
    with pytest.raises(CbirError, match="one class per sample"):
        make_sampler("exhaustive", np.eye(4, dtype=int), 2)
    with pytest.raises(CbirError, match=">= 2 classes"):
        make_sampler("distance-guided", np.zeros(10, int), 6)


def test_random_batches_are_disjoint_within_an_epoch(digits):
    _, y = digits
    batches = list(make_sampler("random", y, 100, seed=0).epoch(1))
    allidx = np.concatenate(batches)
    assert len(batches) == len(y) // 100 and len(np.unique(allidx)) == len(allidx)


def test_m_per_class_gives_m_of_each_class(digits):
    _, y = digits
    s = make_sampler("m-per-class", y, 64, seed=0, m=8)
    for b in s.epoch(1):
        counts = np.bincount(y[b], minlength=10)
        assert sorted(counts[counts > 0]) == [8] * 8


# ------------------------------------------------------------------ exhaustive
def test_exhaustive_covers_every_sample_exactly_once_per_epoch(digits):
    _, y = digits
    y = np.concatenate([y, np.full(23, 10)])  # plus a small class: unequal sizes
    s = make_sampler("exhaustive", y, 60, seed=0, m=6)
    for epoch in (1, 2):
        batches = list(s.epoch(epoch))
        allidx = np.concatenate(batches)
        assert np.array_equal(np.sort(allidx), np.arange(len(y)))  # each index exactly once
        assert len(batches) == -(-len(y) // 60) and all(len(b) == 60 for b in batches[:-1])
        # class-balanced while possible: m of each of 10 classes in the first batches
        for b in batches[:10]:
            assert (
                sorted(np.bincount(y[b], minlength=11)[np.bincount(y[b], minlength=11) > 0])
                == [6] * 10
            )
    assert not np.array_equal(np.concatenate(list(s.epoch(1))), np.concatenate(list(s.epoch(2))))


# ------------------------------------------------------------------ inverse frequency
def test_inverse_frequency_weights_are_one_minus_share_of_draws(digits):
    _, y = digits
    s = make_sampler("inverse-frequency", y, 64, seed=0)
    assert np.array_equal(s.weights(), np.ones(len(y)))
    batches = list(s.epoch(1)) + list(s.epoch(2))
    draws = np.bincount(np.concatenate(batches), minlength=len(y))
    assert np.array_equal(s.draws, draws)
    assert np.allclose(s.weights(), 1 - draws / draws.sum())
    m = make_sampler("inverse-frequency", y, 64, seed=0, share="max")
    list(m.epoch(1))
    assert np.allclose(m.weights(), 1 - m.draws / (m.draws.max() + 1))


@pytest.mark.parametrize("share", ["sum", "max"])
def test_inverse_frequency_draws_rarely_drawn_samples_more(share):
    y = np.zeros(8, np.int64)  # one class of 8 samples, batches of 2
    drawn = np.zeros(8)
    for seed in range(20):
        s = make_sampler("inverse-frequency", y, 2, seed=seed, share=share)
        s.draws[:4] = 100  # history: samples 0-3 drawn 100 times each, 4-7 never
        drawn += np.bincount(
            np.concatenate([b for e in range(1, 26) for b in s.epoch(e)]), minlength=8
        )
    # weights 1 - 100/400 = 0.75 vs 1 ("sum"), 1 - 100/101 vs 1 ("max"), evening out as draws add up
    assert drawn[4:].sum() > drawn[:4].sum() * (1.12 if share == "sum" else 5.0), drawn


# ------------------------------------------------------------------ loss guided
def _hand_distances(x: np.ndarray) -> np.ndarray:
    u = unit(x.astype(np.float64))
    return np.linalg.norm(u[:, None] - u[None], axis=2)


def test_per_sample_losses_match_hand_computed_losses(digits):
    x, y = digits
    x, y = x[:40, :8], y[:40]
    e, lab = torch.from_numpy(x), torch.from_numpy(y)
    d = _hand_distances(x)
    same, other = y[:, None] == y[None], y[:, None] != y[None]
    has_pos = (same.sum(1) > 1) & other.any(1)
    # triplet loss: the hinge of each anchor's hardest triplet
    got, covered = per_sample_losses(get_metric_loss("triplet", 8, 10, margin=0.5), e, lab)
    pos = same & ~np.eye(40, dtype=bool)
    want = np.maximum(0, np.where(pos, d, -1).max(1) - np.where(other, d, 9).min(1) + 0.5)
    assert np.array_equal(covered, has_pos)
    assert np.allclose(got[covered], want[covered], rtol=1e-3, atol=1e-3)  # PML: float32 distances
    # contrastive loss (margins 0 and 1): sum over the anchor's pairs of d_ap and max(0, 1 - d_an)
    got, covered = per_sample_losses(get_metric_loss("contrastive", 8, 10), e, lab)
    want = (np.where(pos, d, 0) + np.where(other, np.maximum(0, 1 - d), 0)).sum(1)
    assert covered.all() and np.allclose(got, want, rtol=1e-3, atol=1e-3)


def _blobs() -> tuple[torch.Tensor, torch.Tensor]:
    """On the unit circle: class 0 (samples 0-5) around angle 0, alone: zero triplet
    loss; class 1 (6-11) around pi/2 and class 2 (12, 13) amid class 1: large loss."""
    ang = np.r_[
        np.linspace(-0.05, 0.05, 6),
        np.pi / 2 + np.linspace(-0.05, 0.05, 6),
        np.pi / 2 + np.array([-0.02, 0.02]),
    ]
    e = torch.tensor(np.c_[np.cos(ang), np.sin(ang)], dtype=torch.float32)
    return e, torch.tensor([0] * 6 + [1] * 6 + [2] * 2)


@pytest.mark.parametrize(
    "loss_name", ["triplet", "proxy-anchor"]
)  # PML per-element, and the fallback
def test_loss_guided_down_weights_zero_loss_and_up_weights_large_loss(loss_name):
    e, lab = _blobs()
    labels = np.r_[
        lab.numpy(), np.zeros(4, np.int64), np.ones(4, np.int64)
    ]  # 14-21: never observed
    s = make_sampler("loss-guided", labels, 4, seed=0, m=2)
    loss_fn = get_metric_loss(loss_name, 2, 3)
    values, covered = per_sample_losses(loss_fn, e, lab)
    assert covered.all() and np.all(values[:6] == 0) and np.all(values[6:] > 0)
    s.observe(np.arange(14), loss_fn, e, lab)
    w = s.weights()
    assert np.all(w[:6] == s.floor)  # zero loss: floor
    assert np.all(w[14:] == 1.0)  # not seen yet: 1
    assert np.all(w[6:14] > s.floor) and w[6:14].max() > 1.5  # loss: above; the largest, well above
    assert np.all(np.argsort(w[6:14], kind="stable") == np.argsort(values[6:14], kind="stable"))
    drawn = np.bincount(
        np.concatenate([b for ep in range(1, 80) for b in s.epoch(ep)]), minlength=len(labels)
    )
    top = 6 + np.argsort(values[6:14])[-2:]
    assert drawn[top].mean() > drawn[14:].mean() > 3 * drawn[:6].mean(), drawn
    s.observe(np.arange(14), loss_fn, e, lab)  # running value: same losses again -> same weights
    assert np.allclose(s.weights(), w)


# ------------------------------------------------------------------ distance guided
def test_distance_guided_draws_hard_negatives_by_distance(digits):
    x, y = digits
    e = unit(x)
    s = make_sampler("distance-guided", y, 90, seed=0, k=8, temperature=0.05, pool=1000, chunk=256)
    s.fit(e)
    assert s.neighbours is not None and s.neighbours.shape == (len(y), 8)  # memory n x k
    assert np.all(y[s.neighbours] != y[:, None])  # only other classes
    d = np.linalg.norm(e[:, None] - e[s.neighbours], axis=2)
    assert np.all(np.diff(d, axis=1) >= -1e-5)  # nearest first
    probs = np.diff(np.c_[np.zeros(len(y)), s.cum_probs], axis=1)
    assert np.all(np.diff(probs, axis=1) <= 1e-12)  # closer -> likelier
    assert np.allclose(s.cum_probs[:, -1], 1.0)
    negs, anchors = [], []
    for b in s.epoch(1):
        a, p, n = b[0::3], b[1::3], b[2::3]
        assert np.all(y[a] == y[p]) and np.all(a != p) and np.all(y[a] != y[n])
        negs.append(n)
        anchors.append(a)
    a, n = np.concatenate(anchors), np.concatenate(negs)
    # every negative is among its anchor's 8 nearest other-class candidates; mostly the nearest
    assert all(n_ in s.neighbours[a_] for a_, n_ in zip(a, n, strict=True))
    rank = np.array(
        [np.flatnonzero(s.neighbours[a_] == n_)[0] for a_, n_ in zip(a, n, strict=True)]
    )
    assert np.mean(rank == 0) > np.mean(rank == 7) + 0.1
    # uniform over other classes before the first fit: rarely among the 8 nearest
    fresh = [b for b in make_sampler("distance-guided", y, 90, seed=0, k=8, pool=1000).epoch(1)]
    a0, n0 = np.concatenate([b[0::3] for b in fresh]), np.concatenate([b[2::3] for b in fresh])
    assert np.all(y[a0] != y[n0])
    assert np.mean([n_ in s.neighbours[a_] for a_, n_ in zip(a0, n0, strict=True)]) < 0.05


def test_distance_guided_end_epoch_uses_the_head(digits):
    x, y = digits
    s = make_sampler("distance-guided", y, 30, seed=0, k=4)
    head = torch.nn.Linear(64, 8)
    head.train()
    s.end_epoch(head, torch.from_numpy(x))
    assert head.training  # mode restored
    with torch.no_grad():
        e = torch.nn.functional.normalize(head(torch.from_numpy(x)), dim=1).numpy()
    ref = make_sampler("distance-guided", y, 30, seed=0, k=4)
    ref._epochs_seen = 1
    ref.fit(e)
    assert np.array_equal(s.neighbours, ref.neighbours)


# ------------------------------------------------------------------ cluster anchors
def test_cluster_anchors_near_centres_positives_and_negatives_outside_the_radius(digits):
    x, y = digits
    e = unit(x)
    s = make_sampler("cluster-anchors", y, 90, seed=0)
    s.fit(e)
    r = np.zeros(len(y))
    for c in range(10):
        ix = np.flatnonzero(y == c)
        r[ix] = np.linalg.norm(e[ix] - e[ix].mean(0), axis=1)
    q20 = np.array([np.quantile(r[y == c], 0.2) for c in range(10)])
    assert s.radius is not None and np.allclose(
        s.radius, [np.quantile(r[y == c], 0.75) for c in range(10)]
    )
    for b in s.epoch(1):
        a, p, n = b[0::3], b[1::3], b[2::3]
        assert np.all(y[a] == y[p]) and np.all(a != p) and np.all(y[a] != y[n])
        assert np.all(r[a] <= q20[y[a]] + 1e-9)  # anchors: nearest 20% of their class
        assert np.all(r[p] >= s.radius[y[p]] - 1e-9) and np.all(r[n] >= s.radius[y[n]] - 1e-9)
    assert abs(len(s.anchors) - 0.2 * len(y)) < 15

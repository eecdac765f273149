"""Metric learning end to end with the trainer on a Fashion-MNIST zero-shot subset: a
triplet run learns (held-out images of the seen classes retrieve better than with the
frozen backbone on MAP@R) and reports the zero-shot figures; the samplers' hooks and
the losses with parameters work through the trainer."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from cbir.heads.learned import LearnedTransform
from cbir.heads.transform import FrozenTransform
from cbir.samplers import TRIPLET_SAMPLERS
from cbir.train.trainer import evaluate_transform, load_data, make_config, train
from tests.conftest import needs_fashion

pytestmark = [needs_fashion, pytest.mark.usefixtures("one_thread")]

CFG = dict(
    dataset="fashion-mnist",
    protocol="fashion-mnist-zeroshot",
    method="triplet",
    miner="batch-hard",
    dim=64,
    size=64,
    train_limit=3000,
    query_limit=1000,
    epochs=5,
    eval_every=0,
    tsne_points=0,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CBIR_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield load_data(make_config(**CFG), progress=False)


def test_triplet_run_beats_frozen_on_held_out_seen_classes_and_reports_zero_shot(data, tmp_path):
    from cbir.eval.run import evaluate_features

    # train on 2,000 of the seen-class images, keep 1,000 of the same classes out
    fit = replace(data, x=data.x[:2000], y=data.y[:2000])
    res = train(make_config(**CFG), tmp_path / "run", progress=False, data=fit)
    held_x, held_y = np.asarray(data.x[2000:]), np.asarray(data.y[2000:])
    learned = evaluate_features(
        LearnedTransform.from_path(tmp_path / "run"),
        held_x,
        held_y,
        None,
        None,
        data.protocol,
        nmi=False,
    )
    frozen = evaluate_features(
        FrozenTransform(center=True), held_x, held_y, None, None, data.protocol, nmi=False
    )
    print(
        "held-out seen classes, learned vs frozen:",
        {k: (learned[k], frozen[k]) for k in ("recall@1", "map@r")},
    )
    assert learned["map@r"] > frozen["map@r"] + 0.1, (learned["map@r"], frozen["map@r"])

    m = res["metrics"]  # zero-shot: the 1,000 queries of the unseen classes, all-vs-all
    assert res["n_train"] == 2000 and res["dim"] == 64 and res["n_queries"] == 1000
    r = [m[f"recall@{k}"] for k in (1, 2, 4, 8)]
    assert r == sorted(r) and 0.5 < r[0] <= 1.0  # 5 unseen classes: chance is about 0.2
    assert 0 < m["nmi"] < 1 and 0 < m["map@r"] < 1
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4, 5]
    assert rows[-1]["loss"] < rows[0]["loss"]
    emb = LearnedTransform.from_path(tmp_path / "run")(np.asarray(data.query[:5]))
    assert emb.shape == (5, 64) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)


@pytest.mark.parametrize(
    "sampler", ["exhaustive", "loss-guided", "distance-guided", "cluster-anchors"]
)
def test_samplers_with_hooks_train_through_the_trainer(sampler, data, tmp_path):
    """The samplers that use ``observe`` / ``end_epoch`` or change the number of steps."""
    small = replace(data, x=data.x[:1500], y=data.y[:1500])  # 5 steps of 256 per epoch
    miner = "as-sampled" if sampler in TRIPLET_SAMPLERS else "batch-hard"
    cfg = make_config(**{**CFG, "epochs": 2, "sampler": sampler, "miner": miner})
    res = train(cfg, tmp_path / "a", progress=False, data=small, final_eval=False)
    rows = [
        json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    ]
    assert res["n_train"] == 1500 and len(rows) == 2
    assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in rows)


@pytest.mark.parametrize("method", ["center", "proxy-anchor"])
def test_losses_with_parameters_train_through_the_trainer(method, data, tmp_path):
    small = replace(data, x=data.x[:1500], y=data.y[:1500])
    cfg = make_config(**{**CFG, "epochs": 3, "method": method, "miner": None})
    train(cfg, tmp_path / "r", progress=False, data=small, final_eval=False)
    rows = [
        json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    ]
    assert rows[-1]["loss"] < rows[0]["loss"], rows


def test_the_default_recipe_keeps_the_frozen_recall_on_unseen_classes(data, tmp_path):
    """The CLI's metric-learning defaults (METRIC_RECIPE: a 1280-d residual head from the
    identity, centred on the collection and reduced on its principal axes, distillation of
    the frozen similarities, lr 1e-4) trained on 3,000 seen-class images
    do not lose more than 4 points of Recall@1 on the unseen classes (1,000 queries of
    classes 5-9, all-vs-all) against the frozen 1280-d features, and lose less than the
    old defaults (an MLP head on standardised features, lr 1e-3). Measured when written:
    0.901 new, 0.857 old, 0.930 frozen with the PCA start centred on the training mean;
    0.910 with the collection-centred PCA start, 0.919 with the whitened one (MAP@R 0.531
    against 0.545 frozen); 0.909 with the spectral weighting 0.25 (MAP@R 0.576); 0.921
    with --reduce collection, distill 4, spectral 0.4, 5 epochs (the default; MAP@R 0.646;
    docs/metric-learning.md)."""
    from cbir.train.config import METRIC_RECIPE, TRAIN_DEFAULTS

    frozen = evaluate_transform(FrozenTransform(center=True), data)
    new = train(
        make_config(**{**CFG, **METRIC_RECIPE}), tmp_path / "new", progress=False, data=data
    )["metrics"]
    old_settings = {**CFG, **TRAIN_DEFAULTS, "epochs": METRIC_RECIPE["epochs"]}
    old = train(make_config(**old_settings), tmp_path / "old", progress=False, data=data)["metrics"]
    figs = {k: (new[k], old[k], frozen[k]) for k in ("recall@1", "map@r")}
    print("unseen classes, new recipe / old defaults / frozen:", figs)
    assert new["recall@1"] >= frozen["recall@1"] - 0.04, figs
    assert new["recall@1"] > old["recall@1"], figs

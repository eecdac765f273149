"""The method registry: every registered method trains one short epoch through the one
loop and writes a run that :class:`LearnedTransform` loads; configurations read back in
both forms (the nested one written now, the flat one of runs written before)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from cbir.data.captions import fashion_mnist_captions, write_captions_json
from cbir.errors import CbirError
from cbir.heads.learned import LearnedTransform
from cbir.heads.sketch import SketchModel
from cbir.train.config import (
    FLAT_DEFAULTS,
    DCMHOptions,
    HashingOptions,
    JointOptions,
    MetricOptions,
    SketchOptions,
    SparseOptions,
    TrainConfig,
    UnsupervisedOptions,
)
from cbir.train.methods.subic import SubicOptions
from cbir.train.plots import redraw
from cbir.train.registry import FAMILIES, METHODS, all_methods, get_method, make_config, read_config
from cbir.train.trainer import load_data, train
from tests.conftest import needs_fashion

TINY = dict(
    dataset="fashion-mnist",
    size=32,
    train_limit=400,
    query_limit=60,
    database_limit=400,
    epochs=1,
    eval_every=1,
    eval_queries=30,
    batch_size=100,
    hidden=[64],
    tsne_points=0,
)
#: Options a method needs to run on TINY (k active units of 64; caption pairs).
NEEDS: dict[str, dict] = {"sparse-topk": {"dim": 64, "loss_options": {"k": 8}}}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    os.environ.setdefault("CBIR_CACHE", str(tmp_path_factory.mktemp("cache")))
    return load_data(make_config(TINY), progress=False)


@pytest.fixture(scope="module")
def captions(tmp_path_factory) -> Path:
    return write_captions_json(
        tmp_path_factory.mktemp("caps") / "fashion.json", fashion_mnist_captions()
    )


def test_every_method_has_one_family():
    assert len(all_methods()) == len(set(all_methods())) == 27
    for name in ("dsh", "hashnet", "csq", "lsh", "itq", "autoencoder", "triplet", "arcface"):
        assert name in METHODS
    assert get_method("vsepp") is FAMILIES["joint"] and get_method("sparse-l1").name == "sparse"
    assert {f.options for f in FAMILIES.values()} == {
        HashingOptions,
        UnsupervisedOptions,
        MetricOptions,
        JointOptions,
        SparseOptions,
        DCMHOptions,
        SketchOptions,
        SubicOptions,
    }
    with pytest.raises(CbirError, match="unknown method 'nope'; known: dsh, dpsh"):
        get_method("nope")


@needs_fashion
@pytest.mark.parametrize("method", all_methods())
def test_each_method_trains_a_run_that_loads(method, data, captions, tmp_path):
    family = get_method(method)
    cfg = make_config(TINY, method=method, **{"bits": 16, "dim": 16, **NEEDS.get(method, {})})
    joint = family.name in ("joint", "dcmh")  # trained on caption pairs
    if joint:
        cfg = make_config(cfg.flat(), captions=str(captions))
    assert isinstance(cfg.options, family.options)
    run = tmp_path / "run"
    res = train(cfg, run, progress=False, data=data, final_eval=False)
    assert res["method"] == method and res["n_train"] > 0
    if family.name == "sketch":  # a drawing's features -> predicted image features
        with pytest.raises(CbirError, match="--sketch DRAWING"):
            LearnedTransform.from_path(run)
        t = SketchModel.from_path(run)
        assert t(data.query[:5]).shape == (5, data.query.shape[1])
    else:
        t = LearnedTransform.from_path(run)
        # SUBIC: --bits counts bits of information, the codes have M * K columns
        width = getattr(cfg.options, "outputs", cfg.options.width)
        assert (t.method, t.kind, t.dim) == (method, cfg.kind(), width)
        assert t.joint == joint
        codes = t(data.query[:5])
        assert codes.shape[0] == 5
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows and np.isfinite(rows[0]["loss"])
    if family.name != "unsupervised":  # the loop ran: one epoch, evaluated
        assert [r["epoch"] for r in rows] == [1] and rows[0]["eval"]
    assert read_config(run) == cfg
    assert json.loads((run / "config.json").read_text())["options"] == json.loads(
        json.dumps(cfg.to_dict()["options"])
    )


def test_config_round_trips():
    cfg = make_config(method="dsh", bits=16, finetune=True, freeze_blocks=3, seed=4)
    assert cfg.options == HashingOptions(bits=16, finetune=cfg.options.finetune)
    assert cfg.options.finetune.freeze_blocks == 3 and cfg.kind() == "binary"
    assert make_config(cfg.to_dict()) == cfg
    assert make_config(cfg.flat()) == cfg
    assert set(cfg.flat()) == set(TrainConfig().flat()) and len(cfg.flat()) == 36
    assert make_config(cfg.flat(), seed=5).seed == 5
    assert make_config(cfg.flat(), finetune=False).options.finetune is None
    sparse = make_config(method="sparse-l1", dim=256, bits=8, miner="x")
    assert sparse.options == SparseOptions(dim=256) and sparse.options.describe() == "256-d"


def test_an_old_flat_config_still_reads(tmp_path):
    """config.json as runs wrote it before the options had classes: one flat object."""
    flat = {
        "dataset": "fashion-mnist",
        "protocol": None,
        "method": "triplet",
        "bits": 64,
        "dim": 32,
        "epochs": 3,
        "batch_size": 128,
        "lr": 0.002,
        "optimizer": "adam",
        "schedule": "cosine",
        "warmup": 200,
        "weight_decay": 1e-05,
        "hidden": [],
        "dropout": 0.1,
        "batchnorm": False,
        "seed": 7,
        "size": 64,
        "train_limit": 3000,
        "query_limit": 500,
        "database_limit": None,
        "eval_every": 5,
        "eval_queries": 1000,
        "loss_options": {"margin": 0.2},
        "sampler": "m-per-class",
        "miner": "batch-hard",
        "memory_bank": False,
        "tsne_points": 0,
        "feedback": None,
        "feedback_weight": 1.0,
        "captions": None,
        "text_hidden": [],
        "finetune": True,
        "backbone_lr": 5e-05,
        "freeze_blocks": 10,
        "augment": "flip",
        "holdout": 0,
    }
    assert set(flat) == set(TrainConfig().flat())
    (tmp_path / "config.json").write_text(json.dumps(flat))
    cfg = read_config(tmp_path)
    assert (cfg.method, cfg.seed, cfg.size, cfg.lr, cfg.hidden) == ("triplet", 7, 64, 0.002, [])
    o = cfg.options
    assert isinstance(o, MetricOptions) and (o.dim, o.miner, o.sampler) == (
        32,
        "batch-hard",
        "m-per-class",
    )
    assert o.loss_options == {"margin": 0.2}
    assert o.finetune is not None and (o.finetune.backbone_lr, o.finetune.freeze_blocks) == (
        5e-05,
        10,
    )
    assert cfg.flat() == {**flat, "memory_bank": False}
    # keys a later cbir wrote are ignored when reading a run, refused when building one
    (tmp_path / "config.json").write_text(json.dumps({**flat, "future": 1}))
    assert read_config(tmp_path) == cfg
    with pytest.raises(CbirError, match="unknown training setting"):
        make_config({**flat, "future": 1})
    # the run directory's own errors
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(CbirError, match="not JSON"):
        read_config(tmp_path)
    with pytest.raises(CbirError, match="no config.json"):
        redraw(tmp_path / "nowhere")


def test_settings_of_other_families_are_refused_or_dropped():
    with pytest.raises(CbirError, match="--finetune trains the supervised methods' backbone; lsh"):
        make_config(method="lsh", finetune=True)
    with pytest.raises(CbirError, match="drop --finetune"):
        make_config(method="dsh", finetune=True, feedback="index")
    assert (
        make_config(method="itq", miner="batch-hard", captions="x").options == UnsupervisedOptions()
    )
    # a configuration whose options are another family's is refused before any work
    with pytest.raises(CbirError, match="takes MetricOptions, not HashingOptions"):
        train(TrainConfig(method="triplet"), "/nonexistent/run", progress=False)
    assert FLAT_DEFAULTS["bits"] == HashingOptions().bits

"""Deep Cross-Modal Hashing (cbir.train.methods.dcmh, cbir.losses.hashing.dcmh) on real
data: codes of both sides are signs packed alike, a short run on a Fashion-MNIST subset
improves both directions over its own initialisation, and an index built with the run
holds binary codes that `cbir search --text` answers by Hamming distance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cbir.data.captions import fashion_mnist_captions, write_captions_json
from cbir.losses.hashing.dcmh import dcmh_loss
from cbir.train.trainer import make_config, train
from tests.conftest import needs_fashion

SMALL = dict(
    dataset="fashion-mnist",
    method="dcmh",
    size=64,
    train_limit=2000,
    query_limit=500,
    epochs=6,
    eval_every=3,
    batch_size=128,
    bits=32,
    hidden=[],
    lr=2e-3,
)


def test_dcmh_loss_prefers_matching_codes():
    g = torch.tensor([0, 0, 1, 1])
    good = torch.tensor([[3.0, 3.0], [3.0, 3.0], [-3.0, -3.0], [-3.0, -3.0]])
    bad = torch.tensor([[3.0, 3.0], [-3.0, -3.0], [3.0, 3.0], [-3.0, -3.0]])
    lg, parts = dcmh_loss(good, good, g, g)
    lb, _ = dcmh_loss(good, bad, g, g)
    assert lg < lb and set(parts) == {"nll", "quant", "balance"}
    # the balance term is zero when every bit is +1 on half the items
    assert parts["balance"] == pytest.approx(0.0)


@pytest.fixture(scope="module")
def captions(tmp_path_factory) -> Path:
    return write_captions_json(
        tmp_path_factory.mktemp("caps") / "fashion.json", fashion_mnist_captions()
    )


@pytest.fixture(scope="module")
def data(captions):
    from cbir.train.joint import load_joint_data

    return load_joint_data(make_config(captions=str(captions), **SMALL), progress=False)


@needs_fashion
def test_short_dcmh_run_improves_over_its_initialisation(data, captions, tmp_path):
    from cbir.train.loop import set_seed
    from cbir.train.methods.dcmh import DCMHModel

    cfg = make_config(captions=str(captions), **SMALL)
    set_seed(cfg.seed)
    init = DCMHModel(cfg, data).evaluate(None)
    out = tmp_path / "run"
    res = train(cfg, out, progress=False, data=data)
    m = res["metrics"]
    for key in ("i2t_map", "t2i_map", "t2i_recall@1"):
        assert m[key] > init[key] + 0.15, (key, m[key], init[key])
    assert res["bits"] == 32
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"] and "nll" in rows[0]

    # an index of test images with the run: binary codes, answered by text
    from cbir.data.registry import open_dataset
    from cbir.pipeline import index_folder

    test = open_dataset("fashion-mnist")["test"]
    labels = np.asarray(test.labels)
    folder = tmp_path / "images"
    folder.mkdir()
    for c in range(10):
        for i in np.flatnonzero(labels == c)[-4:]:
            test.load(int(i)).save(folder / f"{c}_{i}.png")
    idx = tmp_path / "index"
    index_folder(folder, idx, model=out, progress=False)
    right = 0
    for cls, q in {
        1: "a pair of leggings",
        8: "a leather satchel",
        9: "a short heeled boot",
    }.items():
        cmd = [sys.executable, "-m", "cbir.cli", "search", str(idx), "--text", q]
        cmd += ["--text-mode", "joint", "-k", "4", "--json"]
        r = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), timeout=300)
        assert r.returncode == 0, r.stderr
        hits = json.loads(r.stdout)["results"] if "results" in r.stdout else json.loads(r.stdout)
        hits = hits if isinstance(hits, list) else hits["results"]
        got = [int(Path(h["path"]).name.split("_")[0]) for h in hits]
        assert len(got) == 4
        # scores are 1 - hamming / bits: multiples of 1/32
        assert all(abs(h["score"] * 32 - round(h["score"] * 32)) < 1e-4 for h in hits)
        right += sum(g == cls for g in got)
    assert right >= 8, right  # of 12; 1.2 by chance
    from cbir.index.store import IndexStore

    store = IndexStore.open(idx)
    try:
        assert store.config.get("kind") == "binary"
    finally:
        store.close()

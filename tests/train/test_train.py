"""Training runs on a Fashion-MNIST subset: learned codes beat the frozen backbone,
runs are reproducible and complete, and an index stores the learned codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cbir.heads.learned import LearnedTransform, load_checkpoint
from cbir.train.trainer import load_data, make_config, train
from tests.conftest import FASHION_SMALL, needs_fashion

pytestmark = needs_fashion

SMALL = dict(FASHION_SMALL, tsne_points=0)  # t-SNE maps: tests/train/test_plots.py


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    import os

    os.environ.setdefault("CBIR_CACHE", str(tmp_path_factory.mktemp("cache")))
    return load_data(make_config(**SMALL), progress=False)


@pytest.fixture(scope="module")
def frozen_map(data) -> float:
    from cbir.heads.transform import FrozenTransform
    from cbir.train.trainer import evaluate_transform

    return evaluate_transform(FrozenTransform(center=True), data)["map"]


@pytest.mark.parametrize("method", ["csq", "dsh"])
def test_short_run_beats_frozen_baseline(method, data, frozen_map, tmp_path):
    res = train(
        make_config(method=method, bits=32, **SMALL), tmp_path / method, progress=False, data=data
    )
    assert 0.3 < frozen_map < 0.9
    assert res["metrics"]["map"] > frozen_map + 0.05, (res["metrics"]["map"], frozen_map)
    run = tmp_path / method
    for name in ("config.json", "metrics.jsonl", "model.pt", "loss.png", "final.json"):
        assert (run / name).stat().st_size > 0, name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 9))
    assert "map" in rows[3]["eval"] and "map" in rows[7]["eval"]
    assert rows[-1]["loss"] < rows[0]["loss"]


def test_same_seed_same_model(data, tmp_path):
    cfg = make_config(method="dpsh", bits=16, **{**SMALL, "epochs": 2, "eval_every": 0})
    a = train(cfg, tmp_path / "a", progress=False, data=data, final_eval=False)
    b = train(cfg, tmp_path / "b", progress=False, data=data, final_eval=False)
    assert a["n_train"] == b["n_train"] == 3000
    sa, sb = load_checkpoint(tmp_path / "a")["state"], load_checkpoint(tmp_path / "b")["state"]
    for k in sa:
        assert np.array_equal(sa[k].numpy(), sb[k].numpy()), k
    other = train(
        make_config(**{**cfg.flat(), "seed": 1}),
        tmp_path / "c",
        progress=False,
        data=data,
        final_eval=False,
    )
    assert other["n_train"] == 3000
    sc = load_checkpoint(tmp_path / "c")["state"]
    assert not all(np.array_equal(sa[k].numpy(), sc[k].numpy()) for k in sa)


def test_codes_are_packed_signs(data, tmp_path):
    train(
        make_config(method="itq", bits=32, **SMALL),
        tmp_path / "itq",
        progress=False,
        data=data,
        final_eval=False,
    )
    t = LearnedTransform.from_path(tmp_path / "itq")
    u = t.outputs(data.query[:20])
    codes = t(data.query[:20])
    assert codes.dtype == np.uint8 and codes.shape == (20, 4)
    bits = np.unpackbits(codes, axis=1, bitorder="little").astype(bool)
    assert np.array_equal(bits, u >= 0)


def test_itq_beats_lsh(data, tmp_path):
    res = {}
    for m in ("lsh", "itq"):
        res[m] = train(
            make_config(method=m, bits=32, **SMALL), tmp_path / m, progress=False, data=data
        )["metrics"]["map"]
    assert res["itq"] > res["lsh"], res


def test_index_with_model_stores_codes(data, tmp_path, photos_dir):
    from cbir.index.store import IndexStore
    from cbir.pipeline import index_folder
    from cbir.search.searcher import Searcher

    run = tmp_path / "run"
    train(
        make_config(method="csq", bits=32, **{**SMALL, "epochs": 2, "eval_every": 0}),
        run,
        progress=False,
        data=data,
        final_eval=False,
    )
    idx = tmp_path / "index"
    s = index_folder(photos_dir, idx, model=run, progress=False)
    assert s.indexed == s.total > 10
    store = IndexStore.open(idx)
    try:
        assert store.config["kind"] == "binary"
        spec = store.get_meta("transform")
        assert spec["kind"] == "learned" and (idx / spec["file"]).exists()
    finally:
        store.close()
    searcher = Searcher(idx)
    try:
        first = searcher.search_id(1, k=3)
        assert first[0].id == 1 and first[0].distance == 0
    finally:
        searcher.close()
    # an index built with one model refuses another
    from cbir.errors import CbirError

    with pytest.raises(CbirError, match="was built with (another model|the efficientnet)"):
        index_folder(photos_dir, tmp_path / "index-frozen-then-model", progress=False)
        index_folder(photos_dir, tmp_path / "index-frozen-then-model", model=run, progress=False)


def test_cli_train_bits_list_and_json(tmp_path):
    env_cache = tmp_path / "cache"
    cmd = [
        sys.executable,
        "-m",
        "cbir.cli",
        "train",
        "--dataset",
        "fashion-mnist",
        "--method",
        "dsh",
        "--bits",
        "16,32",
        "--out",
        str(tmp_path / "runs"),
        "--epochs",
        "1",
        "--size",
        "64",
        "--train-limit",
        "600",
        "--query-limit",
        "200",
        "--database-limit",
        "600",
        "--eval-every",
        "0",
        "--json",
    ]
    import os

    env = {**os.environ, "CBIR_CACHE": str(env_cache)}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [o["bits"] for o in out] == [16, 32]
    for b in (16, 32):
        assert (Path(tmp_path / "runs" / f"bits-{b}") / "model.pt").exists()
    assert all(0 < o["metrics"]["map"] <= 1 for o in out)

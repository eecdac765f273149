"""Every run draws a t-SNE map of its query embedding beside the loss curve, and
``cbir plot RUN_DIR`` redraws both from the run directory and the cached features."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cbir.cli import main
from cbir.train.plots import TSNE_JSON, TSNE_PNG, redraw
from cbir.train.trainer import load_data, make_config, train
from tests.conftest import needs_fashion

pytestmark = needs_fashion

CFG = dict(
    dataset="fashion-mnist",
    protocol="fashion-mnist-zeroshot",
    method="triplet",
    miner="batch-hard",
    dim=32,
    size=64,
    train_limit=600,
    query_limit=150,
    epochs=2,
    eval_every=0,
    tsne_points=120,
    batch_size=128,
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("cache")
        mp.setenv("CBIR_CACHE", str(path))
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        yield path
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data(cache):
    return load_data(make_config(**CFG), progress=False)


def test_run_writes_tsne_of_query_embedding_and_cbir_plot_redraws_it(data, tmp_path, capsys):
    run = tmp_path / "run"
    train(make_config(**CFG), run, progress=False, data=data, final_eval=False)
    info = json.loads((run / TSNE_JSON).read_text())
    idx = np.asarray(info["indices"])
    assert info["n_query"] == 150 and len(idx) == 120 == len(set(idx.tolist()))
    assert np.all(np.diff(idx) > 0) and idx.max() < 150
    png = (run / TSNE_PNG).read_bytes()
    img = Image.open(run / TSNE_PNG)
    assert img.format == "PNG" and img.size[0] > 300
    a = np.asarray(img.convert("RGB")).reshape(-1, 3)
    assert len(np.unique(a, axis=0)) > 5  # 5 class colours and more, not a blank canvas
    loss = (run / "loss.png").read_bytes()

    # redraw from the run directory alone (config, metrics.jsonl, checkpoint, tsne.json)
    (run / TSNE_PNG).unlink()
    (run / "loss.png").unlink()
    capsys.readouterr()
    assert main(["plot", str(run), "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out) == {"loss": str(run / "loss.png"), "tsne": str(run / TSNE_PNG)}
    assert (run / TSNE_PNG).read_bytes() == png  # same subset, same seed: the same map
    assert (run / "loss.png").read_bytes() == loss

    # a new subset on request; the same seed draws it again
    redraw(run, points=60)
    assert len(json.loads((run / TSNE_JSON).read_text())["indices"]) == 60
    assert (run / TSNE_PNG).read_bytes() != png


def test_binary_run_maps_real_outputs_and_tsne_can_be_off(data, tmp_path):
    train(
        make_config(**{**CFG, "method": "dsh", "miner": None, "bits": 16}),
        tmp_path / "h",
        progress=False,
        data=data,
        final_eval=False,
    )
    assert (tmp_path / "h" / TSNE_PNG).stat().st_size > 0
    assert len(json.loads((tmp_path / "h" / TSNE_JSON).read_text())["indices"]) == 120
    train(
        make_config(**{**CFG, "tsne_points": 0}),
        tmp_path / "off",
        progress=False,
        data=data,
        final_eval=False,
    )
    assert not (tmp_path / "off" / TSNE_PNG).exists() and (tmp_path / "off" / "loss.png").exists()


def test_cbir_plot_errors_name_the_directory(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "config.json" in err and str(tmp_path) in err and len(err.strip().splitlines()) == 1
    (tmp_path / "config.json").write_text(json.dumps(CFG))
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "loss": 0.5}\n{"epoch": 2, "lo')
    assert main(["plot", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "metrics.jsonl: line 2 is not JSON" in err


def test_fine_tuned_metric_run_maps_and_redraws_with_its_own_backbone(cache, tmp_path):
    """``--finetune`` with a metric loss (multi-similarity): the backbone is trained too, the
    t-SNE map embeds with the fine-tuned backbone, and ``cbir plot`` redraws the same map."""
    cfg = make_config(
        **{
            **CFG,
            "method": "multi-similarity",
            "miner": "multi-similarity",
            "size": 32,
            "train_limit": 256,
            "query_limit": 100,
            "tsne_points": 60,
            "batch_size": 64,
            "finetune": True,
            "freeze_blocks": 14,
        }
    )
    run = tmp_path / "ft"
    res = train(cfg, run, progress=False)
    assert (run / "backbone.pt").exists() and res["n_train"] == 256
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(np.isfinite(r["loss"]) for r in rows)
    assert 0.2 < res["metrics"]["recall@1"] <= 1  # 5 unseen classes: chance is about 0.2
    png = (run / TSNE_PNG).read_bytes()
    (run / TSNE_PNG).unlink()
    redraw(run)
    assert (run / TSNE_PNG).read_bytes() == png
    frozen = make_config(**{**cfg.flat(), "finetune": False})
    train(frozen, tmp_path / "frozen", progress=False, final_eval=False)
    assert (tmp_path / "frozen" / TSNE_PNG).read_bytes() != png  # other features, other map

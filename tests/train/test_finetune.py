"""End-to-end fine-tuning on a tiny real case (Fashion-MNIST images in an ImageFolder,
32 px, 2 epochs): the loss falls, the run stores the fine-tuned backbone, its ONNX
export equals the PyTorch model, and indexing, searching and evaluating with the run
embed with the fine-tuned backbone; an index of one backbone refuses the other."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cbir.backbones.efficientnet_lite import (
    file_digest,
    get_backbone,
    load_torch_model,
    weights_digest,
)
from cbir.errors import CbirError
from cbir.heads.learned import LearnedTransform, load_checkpoint
from cbir.train.trainer import TrainConfig, make_config, train
from tests.conftest import needs_fashion, write_fashion_folder

pytestmark = needs_fashion

CLASSES = {0: "tshirt", 1: "trouser", 7: "sneaker"}
SIZE = 32


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    import os

    old = os.environ.get("CBIR_CACHE")
    os.environ["CBIR_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("CBIR_CACHE", None)
    else:
        os.environ["CBIR_CACHE"] = old


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """ImageFolder of real Fashion-MNIST PNGs: train/ (40 per class) and test/ (12 per class)."""
    return write_fashion_folder(
        tmp_path_factory.mktemp("fashion-folder"), CLASSES, {"train": 40, "test": 12}
    )


def _cfg(folder: Path, **kw) -> TrainConfig:
    base = dict(
        dataset=str(folder),
        method="csq",
        bits=16,
        size=SIZE,
        epochs=2,
        batch_size=40,
        eval_every=0,
        tsne_points=0,
        lr=1e-3,
    )
    return make_config(**{**base, **kw})


@pytest.fixture(scope="module")
def ft_run(cache, folder, tmp_path_factory) -> tuple[Path, dict]:
    run = tmp_path_factory.mktemp("runs") / "csq-ft"
    res = train(_cfg(folder, finetune=True, backbone_lr=1e-3), run, progress=False)
    return run, res


@pytest.fixture(scope="module")
def frozen_run(cache, folder, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "csq-frozen"
    train(_cfg(folder, epochs=1), run, progress=False, final_eval=False)
    return run


def test_finetune_run_stores_its_backbone_and_the_loss_falls(ft_run):
    run, res = ft_run
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[1]["loss"] < rows[0]["loss"], rows
    ckpt = load_checkpoint(run)
    weights = run / "backbone.pt"
    assert ckpt["backbone_file"] == "backbone.pt" and weights.stat().st_size > 1_000_000
    assert ckpt["backbone"]["weights"] == file_digest(weights) != weights_digest()
    assert ckpt["backbone"]["preprocess"]["size"] == SIZE
    assert ckpt["finetune"]["onnx_max_abs_diff"] < 1e-4
    # the backbone moved (nothing frozen), its classifier did not
    tuned = torch.load(weights, weights_only=True)
    base = load_torch_model().state_dict()
    assert not torch.equal(tuned["_conv_stem.weight"], base["_conv_stem.weight"])
    assert not torch.equal(tuned["_conv_head.weight"], base["_conv_head.weight"])
    assert torch.equal(tuned["_fc.weight"], base["_fc.weight"])
    # batch-norm statistics stay the ImageNet ones (frozen statistics)
    assert torch.equal(tuned["_bn1.running_mean"], base["_bn1.running_mean"])
    assert 0 < res["metrics"]["map"] <= 1 and res["n_train"] == 120


def test_onnx_features_equal_the_pytorch_model(ft_run, folder):
    from cbir.backbones.preprocess import Preprocess
    from cbir.data.images import decode, read_bytes
    from cbir.utils import cache_dir

    run, _ = ft_run
    weights = run / "backbone.pt"
    backbone = get_backbone(SIZE, weights=weights)
    pre = Preprocess(size=SIZE)
    files = sorted((folder / "test").rglob("*.png"))[::5]
    batch = np.stack([pre(decode(read_bytes(f), str(f))) for f in files])
    onnx_feats, _ = backbone.run(batch)
    model = load_torch_model(weights)
    with torch.no_grad():
        torch_feats = (
            model.extract_features(torch.from_numpy(pre.normalize(batch))).mean(dim=(2, 3)).numpy()
        )
    np.testing.assert_allclose(onnx_feats, torch_feats, atol=1e-4)
    frozen, _ = get_backbone(SIZE).run(batch)
    assert np.abs(frozen - onnx_feats).max() > 1e-2  # a different model
    exports = [p.name for p in cache_dir("backbones").glob("*.onnx")]
    assert f"efficientnet-lite0-{file_digest(weights)}-{SIZE}px-u8-opset17-g1.onnx" in exports


def test_index_search_and_evaluate_embed_with_the_finetuned_backbone(ft_run, folder, tmp_path):
    from cbir.eval.run import evaluate
    from cbir.index.store import IndexStore
    from cbir.pipeline import index_folder
    from cbir.search.searcher import Searcher

    run, _ = ft_run
    fp = LearnedTransform.from_path(run).backbone
    idx = tmp_path / "index"
    s = index_folder(folder / "test", idx, model=run, index_type="MIH", progress=False)
    assert s.indexed == s.total == 36
    store = IndexStore.open(idx)
    try:
        assert store.config["backbone"] == fp and store.config["index_type"] == "MIH"
        assert (idx / f"backbone-{fp['weights']}.pt").exists()
        assert store.get_meta("transform")["backbone_weights"] == fp["weights"]
    finally:
        store.close()
    query = sorted((folder / "test" / "trouser").glob("*.png"))[3]
    searcher = Searcher(idx)
    try:
        assert searcher.backbone.fingerprint == fp
        hits = searcher.search_file(query, k=36)
        own = [h for h in hits if h.path == str(query)]
        assert own and own[0].distance == 0 == hits[0].distance  # its own code (ties by id)
    finally:
        searcher.close()
    # the index is self-contained: the run directory is not needed to search it
    moved = tmp_path / "moved-run"
    shutil.move(run, moved)
    try:
        again = Searcher(idx)
        try:
            assert [h.path for h in again.search_file(query, k=36)] == [h.path for h in hits]
        finally:
            again.close()
    finally:
        shutil.move(moved, run)
    summary, _ = evaluate(str(folder), model=str(run))
    assert summary["kind"] == "binary" and summary["size"] == SIZE
    assert summary["n_queries"] == 36 and 0 < summary["metrics"]["map"] <= 1


def test_an_index_of_one_backbone_refuses_the_other(ft_run, frozen_run, folder, tmp_path):
    from cbir.pipeline import index_folder

    ft, _ = ft_run
    index_folder(folder / "test", tmp_path / "frozen", model=frozen_run, progress=False)
    with pytest.raises(CbirError, match=r"ImageNet weights .*fine-tuned weights"):
        index_folder(folder / "test", tmp_path / "frozen", model=ft, progress=False)
    index_folder(folder / "test", tmp_path / "tuned", model=ft, progress=False)
    with pytest.raises(CbirError, match=r"fine-tuned weights .*ImageNet weights"):
        index_folder(folder / "test", tmp_path / "tuned", model=frozen_run, progress=False)
    # a checkpoint copied without its backbone file says so
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(ft / "model.pt", lone / "model.pt")
    with pytest.raises(CbirError, match="fine-tuned backbone weights"):
        index_folder(folder / "test", tmp_path / "lone-index", model=lone, progress=False)


def test_frozen_blocks_are_cached_and_stay_fixed_for_a_metric_loss(cache, folder, tmp_path):
    cfg = _cfg(
        folder, method="triplet", dim=32, epochs=1, finetune=True, freeze_blocks=12, augment="flip"
    )
    res = train(cfg, tmp_path / "triplet", progress=False)
    assert 0 < res["metrics"]["recall@1"] <= 1
    tuned = torch.load(tmp_path / "triplet" / "backbone.pt", weights_only=True)
    base = load_torch_model().state_dict()
    assert torch.equal(
        tuned["_blocks.11._depthwise_conv.weight"], base["_blocks.11._depthwise_conv.weight"]
    )
    assert torch.equal(tuned["_conv_stem.weight"], base["_conv_stem.weight"])
    assert not torch.equal(
        tuned["_blocks.12._depthwise_conv.weight"], base["_blocks.12._depthwise_conv.weight"]
    )
    ckpt = load_checkpoint(tmp_path / "triplet")
    assert ckpt["kind"] == "float" and ckpt["finetune"]["freeze_blocks"] == 12
    with pytest.raises(CbirError, match="--freeze-blocks"):
        train(_cfg(folder, finetune=True, freeze_blocks=17), tmp_path / "bad", progress=False)
    with pytest.raises(CbirError, match="--finetune"):
        train(_cfg(folder, method="itq", finetune=True), tmp_path / "bad2", progress=False)

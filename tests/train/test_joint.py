"""VSE++ joint image-text space end to end on real data: a short run on a Fashion-MNIST
subset beats the untrained (zero-shot ImageNet-names-through-MiniLM) baseline on
captions of held-out wording, both ways; an index built with the run answers text
queries with images of the right class; captions of image files (COCO layout, real
photos) train and evaluate per image; the CLI runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from cbir.data.captions import fashion_mnist_captions, write_captions_json
from cbir.train.trainer import make_config, train
from tests.conftest import needs_fashion

SMALL = dict(
    dataset="fashion-mnist",
    method="vsepp",
    size=64,
    train_limit=2000,
    query_limit=500,
    epochs=6,
    eval_every=3,
    batch_size=128,
    dim=128,
    hidden=[],
    lr=2e-3,
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    os.environ.setdefault("CBIR_CACHE", str(tmp_path_factory.mktemp("cache")))
    return os.environ["CBIR_CACHE"]


@pytest.fixture(scope="module")
def captions(tmp_path_factory) -> Path:
    return write_captions_json(
        tmp_path_factory.mktemp("caps") / "fashion.json", fashion_mnist_captions()
    )


@pytest.fixture(scope="module")
def data(cache, captions):
    from cbir.train.joint import load_joint_data

    return load_joint_data(make_config(captions=str(captions), **SMALL), progress=False)


@pytest.fixture(scope="module")
def run(data, captions, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("vsepp") / "run"
    res = train(make_config(captions=str(captions), **SMALL), out, progress=False, data=data)
    return out, res


@needs_fashion
def test_data_is_split_by_wording(data):
    assert data.level == "class"
    assert data.images.shape == (2000, 1280) and data.test_images.shape == (500, 1280)
    assert data.texts.shape == (300, 384) and data.test_texts.shape == (60, 384)
    train_caps = {c.caption for c in fashion_mnist_captions() if c.split == "train"}
    assert not set(data.test_captions) & train_caps
    assert sorted(set(data.test_text_groups.tolist())) == list(range(10))


@needs_fashion
def test_short_run_beats_zero_shot_baseline(run, data):
    from cbir.train.joint import evaluate_zero_shot

    out, res = run
    base = evaluate_zero_shot(data)
    m = res["metrics"]
    for key in ("i2t_recall@1", "t2i_recall@1", "i2t_map", "t2i_map"):
        assert m[key] > base[key] + 0.15, (key, m[key], base[key])
    assert m["rsum"] > base["rsum"] + 1.0
    assert all(0 <= m[f"{d}_recall@{k}"] <= 1 for d in ("i2t", "t2i") for k in (1, 5, 10))
    assert m["i2t_recall@1"] <= m["i2t_recall@5"] <= m["i2t_recall@10"]
    for name in ("config.json", "metrics.jsonl", "model.pt", "loss.png", "final.json"):
        assert (out / name).stat().st_size > 0, name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 7))
    assert "t2i_recall@1" in rows[2]["eval"] and rows[-1]["loss"] < rows[0]["loss"]
    final = json.loads((out / "final.json").read_text())
    assert final["metrics"] == pytest.approx(m) and final["n_test_captions"] == 60


@needs_fashion
def test_vse0_trains_and_differs(data, captions, tmp_path):
    cfg = make_config(
        captions=str(captions), **{**SMALL, "method": "vse0", "epochs": 2, "eval_every": 0}
    )
    res = train(cfg, tmp_path / "vse0", progress=False, data=data)
    assert res["method"] == "vse0" and 0 < res["metrics"]["rsum"] <= 6
    from cbir.heads.learned import load_checkpoint

    ck = load_checkpoint(tmp_path / "vse0")
    assert (
        ck["method"] == "vse0"
        and "text_head" in ck
        and ck["text_encoder"]["model"] == "all-MiniLM-L6-v2"
    )


@needs_fashion
def test_index_answers_text_queries_with_the_right_class(run, tmp_path):
    from cbir.data.registry import open_dataset
    from cbir.pipeline import index_folder
    from cbir.search.joint import has_joint_model, image_to_text, text_search

    test = open_dataset("fashion-mnist")["test"]
    labels = np.asarray(test.labels)
    folder = tmp_path / "images"
    folder.mkdir()
    for c in range(10):
        for i in np.flatnonzero(labels == c)[-4:]:
            test.load(int(i)).save(folder / f"{c}_{i}.png")
    idx = tmp_path / "index"
    index_folder(folder, idx, model=run[0], progress=False)
    assert has_joint_model(idx)
    queries = {
        1: "a pair of leggings",
        3: "a long summer dress",
        8: "a leather satchel",
        9: "a short heeled boot",
    }
    for cls, q in queries.items():
        hits = text_search(idx, q, k=4)
        got = [int(Path(h.path).name.split("_")[0]) for h in hits]
        assert len(got) == 4 and sum(g == cls for g in got) >= 3, (q, got)
        assert all(hits[i].score >= hits[i + 1].score for i in range(3))
    # through `cbir search INDEX --text ... --text-mode joint` (cbir.search.text) and a filter
    from cbir.search.searcher import Searcher

    searcher = Searcher(idx)
    try:
        via = searcher.search_text("a leather satchel", k=4, mode="joint")
        assert [h.id for h in via] == [
            h.id for h in text_search(searcher, "a leather satchel", k=4)
        ]
        assert all(h.source == "joint" for h in via)
        only = searcher.search_text(
            "a leather satchel", k=3, mode="joint", where="name contains '3_'"
        )
        assert len(only) == 3 and all(Path(h.path).name.startswith("3_") for h in only)
    finally:
        searcher.close()
    test_caps = [c for c in fashion_mnist_captions() if c.split == "test"]
    names = list(open_dataset("fashion-mnist").class_names)
    right = 0
    files = sorted(folder.iterdir())
    for f in files:
        top = image_to_text(run[0], f, [c.caption for c in test_caps], k=1)[0]
        right += names.index(test_caps[top.index].label) == int(f.name.split("_")[0])
    assert right >= 0.5 * len(files), right
    # an index without a joint model says so
    frozen, few = tmp_path / "frozen", tmp_path / "few"
    few.mkdir()
    for f in files[:3]:
        (few / f.name).write_bytes(f.read_bytes())
    index_folder(few, frozen, size=64, progress=False)
    assert not has_joint_model(frozen) and not has_joint_model(tmp_path / "nowhere")
    from cbir.errors import CbirError

    with pytest.raises(CbirError, match="no image-text model"):
        text_search(frozen, "a bag")


def test_captions_of_image_files_coco_layout(cache, photos_dir, tmp_path):
    """Per-image groups: each photo has two captions; held-out photos are ranked."""
    from cbir.train.joint import load_joint_data

    files = sorted(p for p in photos_dir.rglob("*") if p.is_file())
    coco = {"images": [], "annotations": []}
    for i, f in enumerate(files):
        name = f.stem.replace("_", " ")
        coco["images"].append(
            {"id": 100 + i, "file_name": f.name, "width": 1, "height": 1}
        )  # base names: found by search
        for j, text in enumerate((f"a photo of {name}", f"{name}, a picture")):
            coco["annotations"].append({"id": 10 * i + j, "image_id": 100 + i, "caption": text})
    caps = tmp_path / "captions_train2017.json"
    caps.write_text(json.dumps(coco))
    cfg = make_config(
        dataset=str(photos_dir),
        method="vsepp",
        captions=str(caps),
        size=64,
        epochs=3,
        batch_size=8,
        dim=32,
        hidden=[],
        eval_every=0,
    )
    data = load_joint_data(cfg, progress=False)
    assert (
        data.level == "image" and len(data.test_images) == 1 and len(data.images) == len(files) - 1
    )
    assert len(data.test_texts) == 2 and list(data.test_text_groups) == [0, 0]
    res = train(cfg, tmp_path / "run", progress=False, data=data)
    assert res["level"] == "image" and res["n_train_captions"] == 2 * (len(files) - 1)
    assert (
        res["metrics"]["i2t_recall@1"] == 1.0
    )  # one held-out image: its captions are all there is
    from cbir.errors import CbirError

    coco["images"][0]["file_name"] = "missing.jpg"
    caps.write_text(json.dumps(coco))
    with pytest.raises(CbirError, match="not found under"):
        load_joint_data(cfg, progress=False)


@needs_fashion
def test_cli_train_vsepp_json(cache, captions, tmp_path, run, capsys):
    from cbir.cli import main

    args = [
        "train",
        "--dataset",
        "fashion-mnist",
        "--method",
        "vsepp",
        "--captions",
        str(captions),
        "--size",
        "64",
        "--train-limit",
        "2000",
        "--query-limit",
        "500",
        "--epochs",
        "1",
        "--hidden",
        "",
        "--dim",
        "64",
        "--eval-every",
        "0",
        "--out",
        str(tmp_path / "r"),
        "--json",
    ]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "vsepp" and out["dim"] == 64 and "t2i_recall@10" in out["metrics"]
    assert main([*args[:4], "dsh", "--captions", str(captions), "--out", str(tmp_path / "x")]) == 1
    assert "--captions trains a joint" in capsys.readouterr().err
    assert main(["describe", str(Path(__file__)), "--model", str(run[0]), "--caption", "x"]) == 1
    assert capsys.readouterr().err.startswith("cbir: error:")
    assert main(["describe", "id:1", "--model", str(run[0]), "--caption", "x"]) == 1
    assert "names an indexed image" in capsys.readouterr().err


def test_caption_embeddings_are_cached_per_text_list(cache):
    from cbir.heads.vsepp import cached_text_embeddings, encode_texts
    from cbir.utils import cache_dir

    texts = ["a red bag", "a photo of a sneaker", "a red bag", "an ankle boot"]
    first = cached_text_embeddings(texts)
    direct = encode_texts(texts)
    assert first.shape == (4, 384) and np.allclose(first, direct, atol=1e-5)
    assert np.array_equal(first[0], first[2]) and np.allclose(
        np.linalg.norm(first, axis=1), 1, atol=1e-5
    )
    files = list(cache_dir("text").glob("captions-*/4-*.npy"))
    assert len(files) == 1
    assert np.array_equal(cached_text_embeddings(texts), first)  # read back

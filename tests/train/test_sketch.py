"""Sketch queries (cbir.data.sketch, cbir.train.methods.sketch, cbir.search.sketch): the
drawings made from images are deterministic, a short run beats the frozen backbone on the
same drawings, and `cbir search INDEX --sketch DRAWING --model RUN` answers end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from cbir.data.sketch import edge_sketch, normalise_drawing, sketch_set
from cbir.errors import CbirError
from cbir.heads.sketch import SketchModel
from tests.conftest import needs_fashion, photo_arrays, write_fashion_folder


def test_edge_sketch_is_deterministic_in_its_seed():
    img = Image.fromarray(photo_arrays()["astronaut"])
    a = np.asarray(edge_sketch(img, (0, 7)))
    b = np.asarray(edge_sketch(img, (0, 7)))
    c = np.asarray(edge_sketch(img, (1, 7)))
    assert a.shape == (112, 112, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)  # another seed: another jitter
    ink = a[..., 0] < 128
    assert 0.02 < ink.mean() < 0.6  # strokes, not a blank page nor a filled one
    assert not ink[0].any() and not ink[-1].any()  # cropped to the ink with a margin


@needs_fashion
def test_sketch_set_draws_the_same_image_alike_in_any_subset():
    from cbir.data.registry import open_dataset

    test = open_dataset("fashion-mnist")["test"]
    whole = sketch_set(test.subset(range(10)), seed=3)
    part = sketch_set(test.subset([4, 5]), seed=3)
    assert np.array_equal(np.asarray(whole.load(5)), np.asarray(part.load(1)))
    assert list(part.labels) == list(test.labels[[4, 5]])
    assert part.keys[0].startswith("sketch") and part.keys[0] != test.keys[4]


def test_normalise_drawing_crops_centres_and_refuses_a_blank_page():
    page = Image.new("RGBA", (300, 200), (0, 0, 0, 0))  # a canvas with nothing painted
    with pytest.raises(CbirError, match="empty"):
        normalise_drawing(page)
    ImageDraw.Draw(page).line([(20, 30), (60, 30)], fill=(0, 0, 0, 255), width=5)
    out = np.asarray(normalise_drawing(page))[..., 0] < 128
    rows, cols = np.flatnonzero(out.any(1)), np.flatnonzero(out.any(0))
    assert abs((rows[0] + rows[-1]) / 2 - 56) <= 2 and abs((cols[0] + cols[-1]) / 2 - 56) <= 2
    assert cols[-1] - cols[0] > 80  # scaled up to the square
    # white strokes on black read as the same drawing
    paper = Image.new("RGB", page.size, "white")
    paper.paste(page, mask=page.getchannel("A"))
    inverted = Image.eval(paper, lambda v: 255 - v)
    assert np.array_equal(
        np.asarray(normalise_drawing(inverted)), np.asarray(normalise_drawing(paper))
    )


@needs_fashion
def test_a_short_sketch_run_beats_the_frozen_backbone_on_drawings(sketch_run):
    run, res = sketch_run
    assert (run / "sketch.npz").exists()
    m, base = res["metrics"]["map"], res["baseline"]["map"]
    assert m > base + 0.15, (m, base)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"]
    model = SketchModel.from_path(run)
    assert model.backbone["preprocess"]["size"] == 64
    # the predicted features lie on the image features' shell around their mean
    x = model(np.random.default_rng(0).normal(size=(3, model.dim)).astype(np.float32))
    assert np.allclose(np.linalg.norm(x - model.target_mean, axis=1), model.radius, rtol=1e-4)


def cbir(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cbir.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=os.environ.copy(),
        timeout=300,
    )


@needs_fashion
def test_search_by_a_drawing_end_to_end(sketch_run, tmp_path):
    from cbir.data.registry import open_dataset
    from cbir.pipeline import index_folder

    run, _ = sketch_run
    classes = {1: "trouser", 7: "sneaker", 8: "bag"}
    folder = write_fashion_folder(tmp_path / "fm", classes, {"train": 8})
    idx = tmp_path / "idx"
    index_folder(folder / "train", idx, size=64, workers=1, progress=False)
    test = open_dataset("fashion-mnist")["test"]
    hits = {}
    for label, name in classes.items():
        i = int(np.flatnonzero(test.labels == label)[0])
        drawing = tmp_path / f"{name}.png"
        edge_sketch(test.load(i), (9, i)).save(drawing)
        out = cbir(
            "search",
            str(idx),
            "--sketch",
            str(drawing),
            "--model",
            str(run),
            "-k",
            "8",
            "--json",
            cwd=tmp_path,
        )
        assert out.returncode == 0, out.stderr
        res = json.loads(out.stdout)
        assert res["query"] == str(drawing) and len(res["results"]) == 8
        hits[name] = [Path(h["path"]).parent.name for h in res["results"]]
    right = sum(h.count(name) for name, h in hits.items())
    assert right >= 16, hits  # of 24: 1/3 by chance
    # one-line errors: no model, or a model of another input size
    out = cbir("search", str(idx), "--sketch", str(drawing), cwd=tmp_path)
    assert out.returncode == 1 and "--model RUN_DIR" in out.stderr
    other = tmp_path / "idx224"
    index_folder(folder / "train" / "bag", other, workers=1, progress=False)
    out = cbir("search", str(other), "--sketch", str(drawing), "--model", str(run), cwd=tmp_path)
    assert out.returncode == 1 and "--size 224" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1

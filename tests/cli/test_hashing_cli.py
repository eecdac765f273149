"""`cbir train` -> `cbir index --model --index-type` -> `cbir search` for a hashing run, for
each binary index type: the exact ones (BFlat, MIH) answer alike, ties by id, and an IVF
probing every list returns the same distances."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cbir.cli import main
from tests.conftest import needs_fashion, write_fashion_folder

pytestmark = needs_fashion

CLASSES = {0: "tshirt", 5: "sandal", 8: "bag"}


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    out, _ = capsys.readouterr()
    return code, out


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """ImageFolder of real Fashion-MNIST PNGs: train/ (30 per class), test/ (10 per class)."""
    return write_fashion_folder(
        tmp_path_factory.mktemp("fashion-cli"), CLASSES, {"train": 30, "test": 10}
    )


def test_train_index_search_with_each_binary_index_type(capsys, folder, tmp_path, monkeypatch):
    monkeypatch.setenv("CBIR_CACHE", str(tmp_path / "cache"))
    rund = tmp_path / "run"
    code, out = run(capsys, "train", "--dataset", folder, "--method", "csq", "--bits", "32", "--epochs", "3",
                    "--size", "32", "--eval-every", "0", "--tsne-points", "0", "--out", rund, "--json")  # fmt: skip
    assert code == 0 and json.loads(out)["bits"] == 32
    answers = {}
    for spec in ("BFlat", "MIH", "MIH2", "BIVF4,nprobe=4", "BHNSW8,ef=64"):
        idx = tmp_path / f"index-{spec.replace(',', '_').replace('=', '')}"
        code, out = run(
            capsys,
            "index",
            folder / "test",
            "--index",
            idx,
            "--model",
            rund,
            "--index-type",
            spec,
            "--json",
        )
        assert code == 0 and json.loads(out)["total"] == 30, out
        code, out = run(capsys, "info", idx, "--json")
        info = json.loads(out)
        assert info["index_type"] == spec and info["kind"] == "binary" and info["dimension"] == 32
        query = sorted((folder / "test" / "sandal").glob("*.png"))[2]
        code, out = run(capsys, "search", idx, query, "-k", "30", "--json")
        hits = json.loads(out)["results"]
        assert code == 0 and len(hits) == 30
        assert [h["distance"] for h in hits] == sorted(h["distance"] for h in hits)
        assert any(h["path"] == str(query) and h["distance"] == 0 for h in hits)
        answers[spec] = [(h["distance"], h["path"]) for h in hits]
    # exact indexes: the same (distance, id) order; ids are in path order here, as indexed
    assert answers["MIH"] == answers["BFlat"] == answers["MIH2"]
    for approx in ("BIVF4,nprobe=4", "BHNSW8,ef=64"):  # every list probed / a small graph
        assert [d for d, _ in answers[approx]] == [d for d, _ in answers["BFlat"]]
    code, out = run(
        capsys,
        "index",
        folder / "test",
        "--index",
        tmp_path / "bad",
        "--model",
        rund,
        "--index-type",
        "BIVF64",
    )
    assert code != 0

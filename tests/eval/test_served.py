"""One definition of the served model: `cbir evaluate --index` measures what `cbir search`
returns, and new indexes are centred on a mean stored (and dated) with the index."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import needs_fashion

pytestmark = needs_fashion


@pytest.fixture(scope="module")
def labelled_folder(tmp_path_factory) -> Path:
    """An ImageFolder of 24 real Fashion-MNIST test images, 6 of each of 4 classes."""
    from cbir.data.registry import open_dataset

    test = open_dataset("fashion-mnist")["test"]
    root = tmp_path_factory.mktemp("labelled")
    for c in (0, 1, 7, 8):
        name = test.class_names[c].replace("/", "-")
        (root / name).mkdir()
        for i in np.flatnonzero(test.labels == c)[:6]:
            test.load(int(i)).save(root / name / f"{i}.png")
    return root


def _cbir(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cbir.cli", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=600,
    )


def _json(*args: str):
    r = _cbir(*args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _map_from_search(results: list[dict]) -> float:
    """mAP of `cbir search` rankings: all-vs-all, each query's own image left out."""
    aps = []
    for res in results:
        q = res["query"]
        label = Path(q).parent.name
        ranked = [h["path"] for h in res["results"] if h["path"] != q]
        rel = np.array([Path(p).parent.name == label for p in ranked], np.float64)
        if not rel.any():
            continue
        prec = np.cumsum(rel) / np.arange(1, len(rel) + 1)
        aps.append(float((prec * rel).sum() / rel.sum()))
    return float(np.mean(aps))


def test_evaluate_index_equals_the_map_of_search_rankings(labelled_folder, tmp_path):
    idx = tmp_path / "idx"
    summary = _json("index", str(labelled_folder), "--index", str(idx), "--size", "64")
    assert summary["total"] == 24
    info = _json("info", str(idx))
    assert info["model"]["center"] is True  # a new index is centred by default
    assert info["center"]["fitted"] and info["center"]["images"] == 24
    assert info["center"]["at"].endswith("Z")
    results = _json("search", str(idx), str(labelled_folder), "-k", "24")
    assert len(results) == 24 and all(len(r["results"]) == 24 for r in results)
    served = _map_from_search(results)
    ev = _json("evaluate", "--index", str(idx), "--labels", "folder")
    assert ev["n_queries"] == 24 and ev["n_database"] == 24
    assert ev["model_fingerprint"] == info["model_fingerprint"]
    assert abs(ev["metrics"]["map"] - served) < 1e-6
    # the same labels from a CSV (paths relative to the CSV's folder) give the same figure
    csv = labelled_folder.parent / f"{labelled_folder.name}-labels.csv"
    csv.write_text(
        "path,label\n"
        + "".join(
            f"{labelled_folder.name}/{p.parent.name}/{p.name},{p.parent.name}\n"
            for p in sorted(labelled_folder.rglob("*.png"))
        )
    )
    ev_csv = _json("evaluate", "--index", str(idx), "--labels", str(csv))
    assert abs(ev_csv["metrics"]["map"] - served) < 1e-6
    # and evaluating the folder with the default model measures that same served model
    ev_ds = _json("evaluate", "--dataset", str(labelled_folder), "--size", "64")
    assert "centred" in ev_ds["model"]
    assert abs(ev_ds["metrics"]["map"] - served) < 1e-6


def test_no_center_opts_out_and_an_existing_index_keeps_its_setting(labelled_folder, tmp_path):
    idx = tmp_path / "plain"
    _json("index", str(labelled_folder), "--index", str(idx), "--size", "64", "--no-center")
    info = _json("info", str(idx))
    assert info["model"]["center"] is False and info["center"] is None
    # updating without the option keeps what the index recorded
    _json("index", str(labelled_folder), "--index", str(idx))
    assert _json("info", str(idx))["model"]["center"] is False
    r = _cbir("index", str(labelled_folder), "--index", str(idx), "--center")
    assert r.returncode == 1 and "built with --no-center" in r.stderr
    r = _cbir("index", str(labelled_folder), "--index", str(idx), "--refit-center")
    assert r.returncode == 1 and "not centred" in r.stderr and "Traceback" not in r.stderr
    plain = _json("evaluate", "--index", str(idx))
    results = _json("search", str(idx), str(labelled_folder), "-k", "24")
    assert abs(plain["metrics"]["map"] - _map_from_search(results)) < 1e-6


def test_the_mean_is_fixed_at_the_first_build_and_refit_on_request(photos_copy, tmp_path):
    import shutil

    from cbir.index.store import IndexStore
    from cbir.index.vector_index import current_transform
    from cbir.pipeline import index_folder

    later = tmp_path / "later"
    later.mkdir()
    moved = sorted(p for p in photos_copy.rglob("*") if p.is_file())[:4]
    for p in moved:
        shutil.move(p, later / p.name)
    idx = tmp_path / "idx"
    index_folder(photos_copy, idx, size=64, workers=1, progress=False)

    def fit() -> tuple[dict, np.ndarray]:
        store = IndexStore.open(idx)
        try:
            t = current_transform(store)
            return dict(t.fitted), t.mean.copy()
        finally:
            store.close()

    first, mean = fit()
    assert first["images"] == 9
    for p in moved:
        shutil.move(later / p.name, photos_copy / p.name)
    index_folder(photos_copy, idx, workers=1, progress=False)  # new images: the mean stays
    again, same = fit()
    assert again == first and np.array_equal(same, mean)
    s = index_folder(photos_copy, idx, workers=1, progress=False, refit_center=True)
    assert s.refit_center is not None and s.refit_center["images"] == 13
    refit, new = fit()
    assert refit["images"] == 13 and not np.allclose(new, mean)
    from cbir.search.searcher import Searcher

    searcher = Searcher(idx)
    try:  # the rebuilt index serves: each image is its own nearest neighbour
        hits = searcher.search_id(1, k=3)
        assert hits[0].id == 1 and abs(hits[0].score - 1.0) < 1e-5
    finally:
        searcher.close()


def test_a_centred_index_first_built_without_images_fits_its_mean_later(tmp_path, photos_dir):
    import shutil

    from cbir.pipeline import index_folder
    from cbir.search.searcher import Searcher

    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    idx = tmp_path / "idx"
    s = index_folder(folder, idx, size=64, workers=1, progress=False)
    assert s.total == 0 and len(s.failed) == 1
    for p in sorted(photos_dir.glob("*.jpg"))[:3]:
        shutil.copy(p, folder / p.name)
    s = index_folder(folder, idx, workers=1, progress=False)
    assert s.total == 3
    searcher = Searcher(idx)
    try:
        assert searcher.transform.fitted["images"] == 3
        assert searcher.search_id(1, k=1)[0].id == 1
    finally:
        searcher.close()


def test_a_metric_run_with_the_cli_defaults_serves_what_evaluate_measures(
    labelled_folder, tmp_path
):
    """The metric-learning defaults reduce the head's outputs on the collection's
    principal axes (--reduce collection): `cbir index --model` fits them with the mean and
    stores them; `cbir evaluate --index` equals the mAP of `cbir search`'s rankings; a
    plain MLP head (`--head mlp`) still trains with the other defaults."""
    run = tmp_path / "run"
    out = _json(
        "train", "--dataset", str(labelled_folder), "--method", "triplet", "--dim", "8",
        "--epochs", "2", "--size", "64", "--tsne-points", "0", "--out", str(run),
    )  # fmt: skip
    assert out["dim"] == 8
    config = json.loads((run / "config.json").read_text())["options"]
    assert config["reduce"] == "collection" and config["head_init"] == "identity"
    idx = tmp_path / "idx"
    _json("index", str(labelled_folder), "--index", str(idx), "--model", str(run))
    info = _json("info", str(idx))
    spec = info["model"]
    assert info["dimension"] == 8 and spec["reduce"] == 8 and spec["spectral"] == 0.4
    assert (idx / spec["spectral_map"]["file"]).exists()
    results = _json("search", str(idx), str(labelled_folder), "-k", "24")
    ev = _json("evaluate", "--index", str(idx), "--labels", "folder")
    assert abs(ev["metrics"]["map"] - _map_from_search(results)) < 1e-6
    mlp = tmp_path / "mlp"
    _json(
        "train", "--dataset", str(labelled_folder), "--method", "triplet", "--dim", "8",
        "--epochs", "1", "--size", "64", "--tsne-points", "0", "--head", "mlp",
        "--center", "train", "--spectral", "0", "--out", str(mlp),
    )  # fmt: skip
    assert json.loads((mlp / "config.json").read_text())["options"]["reduce"] == "head"

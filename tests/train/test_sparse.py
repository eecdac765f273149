"""Sparse codes end to end on real Fashion-MNIST features: the encoders give the promised
sparsity, a run indexes into an inverted index that answers like a brute-force sparse
dot product, and `cbir train` / `cbir evaluate` / `cbir search` take the new flags."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from cbir.heads.learned import LearnedTransform, load_checkpoint
from cbir.train.trainer import make_config, train
from tests.conftest import FASHION_SMALL, needs_fashion

pytestmark = [needs_fashion, pytest.mark.usefixtures("one_thread")]

SMALL = FASHION_SMALL


@pytest.fixture(scope="module")
def topk_run(small_data, tmp_path_factory) -> tuple[Path, dict]:
    run = tmp_path_factory.mktemp("runs") / "topk"
    cfg = make_config(
        method="sparse-topk",
        dim=256,
        hidden=[],
        loss_options={"k": 12, "supervised": 1.0},
        **{**SMALL, "epochs": 3, "eval_every": 2},
    )
    return run, train(cfg, run, progress=False, data=small_data)


def test_topk_codes_have_k_active_units(topk_run, small_data):
    run, res = topk_run
    t = LearnedTransform.from_path(run)
    assert t.kind == "sparse" and t.dim == 256
    codes = t(small_data.query)
    assert sp.issparse(codes) and codes.shape == (500, 256)
    per_row = codes.getnnz(axis=1)
    assert (
        per_row.max() <= 12 and per_row.mean() > 11
    )  # the promise: at most k, ReLU rarely drops one
    np.testing.assert_allclose(sp.linalg.norm(codes, axis=1), 1.0, atol=1e-5)
    # the k kept units are the k largest head outputs
    u = t.outputs(small_data.query[:50])
    for r in range(50):
        top = set(np.argsort(-u[r])[:12][u[r][np.argsort(-u[r])[:12]] > 0].tolist())
        assert set(codes[r].indices.tolist()) == top
    assert load_checkpoint(run)["sparse"]["train_active_mean"] <= 12
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and "map" in rows[1]["eval"]
    assert all(r["active"] <= 12 for r in rows)
    assert 0.3 < res["metrics"]["map"] < 1


def test_l1_codes_are_sparse(small_data, tmp_path):
    part = dataclasses.replace(small_data, x=small_data.x[:1500], y=small_data.y[:1500])
    cfg = make_config(
        method="sparse-l1",
        dim=128,
        hidden=[],
        lr=3e-3,
        schedule="constant",
        loss_options={"l1": 0.01},
        **{**SMALL, "epochs": 5, "eval_every": 0, "batch_size": 32},
    )

    def active(name: str, **change) -> float:
        train(
            make_config(**{**cfg.flat(), **change}),
            tmp_path / name,
            progress=False,
            data=part,
            final_eval=False,
        )
        return float(
            LearnedTransform.from_path(tmp_path / name)(small_data.query).getnnz(axis=1).mean()
        )

    sparse_ = active("l1")
    relu = active("relu", epochs=1, loss_options={"l1": 0.0})  # a ReLU code without the penalty
    assert 1 < sparse_ < 0.25 * 128 and sparse_ < 0.6 * relu, (sparse_, relu)
    assert (
        abs(load_checkpoint(tmp_path / "l1")["sparse"]["train_active_mean"] - sparse_) < 0.1 * 128
    )
    assert active("cap", epochs=1, loss_options={"k": 5}) <= 5  # the optional cap


def test_index_search_equals_brute_force(topk_run, photos_dir, tmp_path):
    from cbir.index.store import IndexStore
    from cbir.index.vector_index import load
    from cbir.pipeline import index_folder
    from cbir.search.searcher import Searcher

    run, _ = topk_run
    idx = tmp_path / "idx"
    s = index_folder(photos_dir, idx, model=run, progress=False)
    assert s.total == 13
    store = IndexStore.open(idx)
    assert store.config["index_type"] == "Inverted" and store.config["kind"] == "sparse"
    index, t, _ = load(store)
    assert type(index).__name__ == "SparseIndex" and index.ntotal == 13
    ids, feats = next(store.iter_features())
    codes = t(feats).toarray().astype(np.float64)
    se = Searcher(idx)
    for qi in (0, 5):
        hits = se.search_id(int(ids[qi]), k=13)
        scores = codes @ codes[qi]
        order = np.lexsort((ids, -scores))
        assert [h.id for h in hits] == ids[order].tolist()
        np.testing.assert_allclose([h.score for h in hits], scores[order], atol=1e-5)
    # deletes reach the inverted index file, which is reloaded from disk
    victim = int(ids[3])
    store.lock()
    store.delete([victim])
    from cbir.index.vector_index import refresh

    refresh(store)
    store.close()
    assert list(idx.glob("index-*.sidx"))
    se2 = Searcher(idx)
    assert victim not in [h.id for h in se2.search_id(int(ids[0]), k=13)]
    r = subprocess.run(
        [sys.executable, "-m", "cbir.cli", "check", str(idx), "--no-hashes"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )
    assert r.returncode == 0, r.stdout + r.stderr


def _cbir(capsys, *args: str) -> tuple[int, str, str]:
    """``cbir ARGS`` in this process (the subcommands' start-up is paid once)."""
    from cbir.cli import main

    capsys.readouterr()
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_train_evaluate_search_flags(topk_run, photos_dir, tmp_path, capsys):
    run, _ = topk_run
    out = tmp_path / "cli-run"
    rc, stdout, err = _cbir(
        capsys,
        "train",
        "--dataset",
        "fashion-mnist",
        "--size",
        "64",
        "--train-limit",
        "3000",
        "--query-limit",
        "500",
        "--database-limit",
        "3000",
        "--method",
        "sparse-topk",
        "--dim",
        "64",
        "--hidden",
        "",
        "--loss-option",
        "k=6",
        "--epochs",
        "1",
        "--eval-every",
        "0",
        "--out",
        str(out),
        "--json",
    )
    assert rc == 0, err
    res = json.loads(stdout)
    assert res["method"] == "sparse-topk" and res["dim"] == 64 and 0 < res["metrics"]["map"] < 1
    rc, _, err = _cbir(
        capsys,
        "train",
        "--dataset",
        "fashion-mnist",
        "--method",
        "sparse-topk",
        "--loss-option",
        "kk=3",
        "--out",
        str(tmp_path / "bad"),
    )
    assert rc == 1 and "kk" in err  # refused before any feature is computed
    # index + search with each re-ranking mode
    idx = tmp_path / "idx"
    assert _cbir(capsys, "index", str(photos_dir), "--index", str(idx), "--model", str(run))[0] == 0
    ids = lambda text: [h["id"] for h in json.loads(text)["results"]]  # noqa: E731
    plain = ids(_cbir(capsys, "search", str(idx), "id:2", "-k", "5", "--json")[1])
    same = _cbir(
        capsys,
        "search",
        str(idx),
        "id:2",
        "-k",
        "5",
        "--json",
        "--rerank",
        "aqe",
        "--rerank-n",
        "1",
        "--rerank-alpha",
        "0",
    )
    assert ids(same[1]) == plain and len(plain) == 5
    for mode in ("qe", "kreciprocal"):
        rc, stdout, err = _cbir(
            capsys,
            "search",
            str(idx),
            "id:2",
            "-k",
            "5",
            "--json",
            "--rerank",
            mode,
            "--rerank-k1",
            "4",
            "--rerank-k2",
            "2",
            "--rerank-n",
            "3",
        )
        assert rc == 0, err
        got = ids(stdout)
        assert len(got) == 5 and got[0] == 2
    rc, _, err = _cbir(capsys, "search", str(idx), "id:2", "--rerank", "qe", "--rerank-n", "0")
    assert rc == 1 and "--rerank-n" in err
    # cbir evaluate --model with a sparse run, re-ranked, with its report
    from cbir.data.registry import open_dataset

    test = open_dataset("fashion-mnist")["test"]
    folder = tmp_path / "folder"
    for c in range(4):
        (folder / str(c)).mkdir(parents=True)
        for i in np.flatnonzero(test.labels == c)[:10]:
            test.load(int(i)).save(folder / str(c) / f"{i}.png")
    report = tmp_path / "report"
    rc, stdout, err = _cbir(
        capsys,
        "evaluate",
        "--dataset",
        str(folder),
        "--model",
        str(run),
        "--json",
        "--rerank",
        "kreciprocal",
        "--rerank-shortlist",
        "20",
        "--rerank-k1",
        "5",
        "--out",
        str(report),
    )
    assert rc == 0, err
    out = json.loads(stdout)
    assert (
        out["kind"] == "sparse"
        and out["rerank"]["mode"] == "kreciprocal"
        and out["n_queries"] == 40
    )
    assert 0 < out["metrics"]["map"] <= 1 and (report / "topk.png").stat().st_size > 0


def test_evaluate_sparse_model_with_rerank(topk_run, small_data):
    from cbir.eval.run import evaluate_features
    from cbir.search.rerank import Rerank

    run, res = topk_run
    t = LearnedTransform.from_path(run)
    args = (
        t,
        small_data.query,
        small_data.query_labels,
        small_data.database,
        small_data.database_labels,
        small_data.protocol,
    )
    plain = evaluate_features(*args, progress=False)
    assert plain["map"] == pytest.approx(res["metrics"]["map"], abs=1e-9)
    dense = evaluate_features(_Dense(t), *args[1:], progress=False)  # the same codes, dense rows
    assert plain["map"] == pytest.approx(dense["map"], abs=1e-6)
    qe = evaluate_features(*args, progress=False, rerank=Rerank("qe", n=5))
    assert qe["map"] != plain["map"] and 0 < qe["map"] < 1


class _Dense:
    """A sparse model's codes as dense rows (to check the sparse evaluation path)."""

    kind = "float"

    def __init__(self, t: LearnedTransform) -> None:
        self.t = t

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.t(x).toarray()

    def float_view(self, x: np.ndarray) -> np.ndarray:
        return self(x)

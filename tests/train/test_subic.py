"""SUBIC end to end on real Fashion-MNIST features: a short run beats chance, an index of
its codes answers with the paper's asymmetric score, and `cbir train` / `cbir index` /
`cbir search` take the method."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cbir.heads.learned import LearnedTransform
from cbir.train.trainer import make_config, train
from tests.conftest import FASHION_SMALL, needs_fashion

pytestmark = [needs_fashion, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def run(small_data, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("runs") / "subic"
    cfg = make_config(
        method="subic",
        bits=16,
        loss_options={"k": 16},
        **{**FASHION_SMALL, "epochs": 3, "eval_every": 3, "tsne_points": 0},
    )
    return out, train(cfg, out, progress=False, data=small_data)


def test_short_run_beats_chance_with_one_hot_blocks(run, small_data):
    out, res = run
    t = LearnedTransform.from_path(out)
    assert t.kind == "subic-k16" and t.dim == 4 * 16 and res["bits"] == 16
    # 10 balanced classes: a random ranking has mAP ~0.1
    assert res["metrics"]["map"] > 0.4 and res["metrics"]["recall@1"] > 0.5
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["mean_entropy"] < rows[0]["mean_entropy"]  # blocks move towards one-hot
    z = t(small_data.query[:100])
    np.testing.assert_allclose(z.reshape(100, 4, 16).sum(2), 1.0, atol=1e-5)


def test_index_search_is_asymmetric(run, photos_dir, tmp_path, capsys):
    from cbir.cli import main
    from cbir.codes.subic import active
    from cbir.index.store import IndexStore
    from cbir.search.searcher import Searcher

    out, _ = run
    idx = tmp_path / "idx"
    assert main(["index", str(photos_dir), "--index", str(idx), "--model", str(out)]) == 0
    store = IndexStore.open(idx)
    assert store.config["index_type"] == "ADC" and store.config["kind"] == "subic-k16"
    ids, feats = next(store.iter_features())
    store.close()
    t = LearnedTransform.from_path(out)
    z = t(feats)
    codes = active(z, 16)
    se = Searcher(idx)
    hits = se.search_id(int(ids[0]), k=len(ids))
    want = np.array([z[0].reshape(4, 16)[np.arange(4), codes[j]].mean() for j in range(len(ids))])
    got = {h.id: h.score for h in hits}
    assert len(got) == len(ids)
    for j, id_ in enumerate(ids):
        assert abs(got[int(id_)] - want[j]) < 1e-5
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    capsys.readouterr()
    q = f"id:{int(ids[0])}"
    assert main(["search", str(idx), q, "-k", "4", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)["results"]
    assert [r["score"] for r in res] == pytest.approx([h.score for h in hits[:4]], abs=1e-5)
    # a filtered search (exact, among the passing ids) scores the same way
    cut = int(np.sort(ids)[6])
    assert main(["search", str(idx), q, "-k", "4", "--json", "--where", f"id < {cut}"]) == 0
    filt = json.loads(capsys.readouterr().out)["results"]
    assert len(filt) == 4 and all(r["id"] < cut for r in filt)
    for r in filt:
        assert abs(r["score"] - got[r["id"]]) < 1e-5


def test_cli_train_subic(tmp_path, capsys):
    from cbir.cli import main

    out = tmp_path / "cli"
    args = ["train", "--dataset", "fashion-mnist", "--size", "64", "--method", "subic"]
    limits = ["--train-limit", "3000", "--query-limit", "500", "--database-limit", "3000"]
    capsys.readouterr()
    rc = main(
        [*args, *limits, "--bits", "8", "--loss-option", "k=4", "--epochs", "1"]
        + ["--eval-every", "0", "--tsne-points", "0", "--out", str(out), "--json"]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    res = json.loads(captured.out)
    assert res["method"] == "subic" and res["bits"] == 8 and 0.1 < res["metrics"]["map"] < 1
    assert LearnedTransform.from_path(out).dim == 4 * 4  # 8 bits = 4 blocks of 4
    rc = main([*args, "--bits", "12", "--out", str(tmp_path / "bad")])  # 12 % log2(256)
    assert rc == 1 and "--bits 12" in capsys.readouterr().err

"""The feedback loop: judgements recorded through the service become training pairs, and a
model retrained with ``--feedback INDEX_DIR`` no longer ranks the marked wrong result first.

A triplet model trained on Fashion-MNIST classes 0-4 indexes images of the unseen classes
5-9, where it makes mistakes; for queries whose top result is of another class (by id and
by an uploaded image) a user marks that result wrong and a lower-ranked one of the same
class right, through ``POST /feedback``. Retrained with the feedback and re-indexed, the
right result ranks above the wrong one. The same with a pairwise hashing loss (DSH),
feedback written to the store, ranking by the head's real outputs.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from cbir.cli import main
from cbir.errors import CbirError
from cbir.heads.learned import LearnedTransform
from cbir.index.store import IndexStore
from cbir.pipeline import index_folder
from cbir.search.searcher import Searcher
from cbir.train.feedback import FeedbackTerm, load_feedback, pairs_of
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
    train_limit=1500,
    query_limit=200,
    epochs=3,
    eval_every=0,
    tsne_points=0,
    batch_size=128,
    hidden=[256],
)
PER_CLASS, UPLOADS = 40, 30
K = 10
#: The service key the feedback posts send (feedback is a write).
FEEDBACK_KEY = "feedback-test-key-0123456789"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CBIR_CACHE", str(tmp_path_factory.mktemp("cache")))
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        yield tmp_path_factory.mktemp("feedback")
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data(env):
    return load_data(make_config(**CFG), progress=False)


@pytest.fixture(scope="module")
def images(env) -> tuple[Path, dict[str, int], list[tuple[bytes, int]]]:
    """PNGs of unseen-class test images (the folder to index; label by file stem) and
    other images of the same classes to upload as queries."""
    from cbir.data.registry import open_dataset

    test = open_dataset("fashion-mnist")["test"]
    y = np.asarray(test.labels)
    root = env / "unseen"
    root.mkdir()
    label: dict[str, int] = {}
    uploads: list[tuple[bytes, int]] = []
    for c in range(5, 10):
        idx = np.flatnonzero(y == c)
        for i in idx[:PER_CLASS]:
            test.load(int(i)).save(root / f"{i}.png")
            label[str(i)] = c
        for i in idx[PER_CLASS : PER_CLASS + UPLOADS // 5]:
            buf = io.BytesIO()
            test.load(int(i)).save(buf, "PNG")
            uploads.append((buf.getvalue(), c))
    return root, label, uploads


def cls(path: str, label: dict[str, int]) -> int:
    return label[Path(path).stem]


def mistakes(hits_by_query, qlabel) -> list[tuple[object, int, int]]:
    """(query, wrong top result, right result further down) where the top result is wrong."""
    out = []
    for q, hits in hits_by_query:
        if hits and hits[0][1] != qlabel[q]:
            right = next((h for h, c in hits[1:] if c == qlabel[q]), None)
            if right is not None:
                out.append((q, hits[0][0], right))
    return out


def rank(hits: list[int], id_: int) -> int:
    return hits.index(id_) if id_ in hits else len(hits)


def test_feedback_through_the_service_fixes_marked_wrong_top_results(data, images, env):
    from cbir.service.app import create_app

    root, label, uploads = images
    run = env / "run"
    train(make_config(**CFG), run, progress=False, data=data, final_eval=False)
    index = env / "index"
    index_folder(root, index, model=run, progress=False)

    with TestClient(
        create_app(index, api_key=FEEDBACK_KEY, allowed_hosts=["testserver"])
    ) as client:
        store = IndexStore.open(index)
        rows = {r["id"]: cls(r["path"], label) for r in store.rows()}
        store.close()
        by_id = []
        for i in rows:
            res = client.get("/search", params={"id": i, "k": K + 1}).json()["results"]
            by_id.append((i, [(h["id"], rows[h["id"]]) for h in res if h["id"] != i][:K]))
        id_cases = mistakes(by_id, rows)[:3]
        by_upload, qlabel = [], {}
        for n, (png, c) in enumerate(uploads):
            res = client.post(
                "/search", files={"file": (f"q{n}.png", png, "image/png")}, data={"k": str(K)}
            ).json()
            qlabel[res["query"]] = c
            by_upload.append((res["query"], [(h["id"], rows[h["id"]]) for h in res["results"]]))
        up_cases = mistakes(by_upload, qlabel)[:2]
        assert len(id_cases) == 3 and len(up_cases) == 2, "the zero-shot model should make mistakes"
        for q, wrong, right in id_cases + up_cases:
            query = q if isinstance(q, str) else f"id:{q}"
            for rid, relevant in ((wrong, False), (right, True)):
                r = client.post(
                    "/feedback",
                    json={"query": query, "result_id": rid, "relevant": relevant},
                    headers={"X-API-Key": FEEDBACK_KEY},
                )
                assert r.status_code == 201, r.text
                assert r.json()["query_saved"] is query.startswith("sha256:")

    fb = load_feedback(index, data.fingerprint)  # groups may share items: pairs >= judgements
    assert (
        fb.judgements == 10 and not fb.skipped and len(fb.negative) >= 5 and len(fb.positive) >= 5
    )
    res = train(
        make_config(**{**CFG, "feedback": str(index)}),
        env / "run-fb",
        progress=False,
        data=data,
        final_eval=False,
    )
    assert res["feedback"]["judgements"] == 10 and res["feedback"]["tuples"] >= 5
    index2 = env / "index-fb"
    index_folder(root, index2, model=env / "run-fb", progress=False)
    s = Searcher(index2)
    try:
        for q, wrong, right in id_cases:
            ids = [h.id for h in s.search_id(q, len(rows)) if h.id != q]
            assert ids[0] != wrong and rank(ids, right) < rank(ids, wrong), (q, wrong, right, ids)
        png_of = {f"sha256:{hashlib.sha256(png).hexdigest()}": png for png, _ in uploads}
        for q, wrong, right in up_cases:
            ids = [h.id for h in s.search_features(s.embed_bytes(png_of[q]), len(rows))[0]]
            assert ids[0] != wrong and rank(ids, right) < rank(ids, wrong), (q, wrong, right, ids)
        # the rest of the ranking is not wrecked: top-1 accuracy of the id queries stays close
        before = np.mean([h[0][1] == rows[q] for q, h in by_id])
        after = np.mean([rows[s.search_id(q, 2)[1].id] == rows[q] for q in rows])
        assert after > before - 0.1, (before, after)
    finally:
        s.close()


def test_pairwise_hashing_loss_learns_from_feedback_in_the_store(data, images, env):
    """DSH with feedback written straight to the store; ranks by the head's real outputs."""
    root, label, _ = images
    cfg = make_config(**{**CFG, "method": "dsh", "miner": None, "bits": 16})
    train(cfg, env / "dsh", progress=False, data=data, final_eval=False)
    index = env / "index-dsh"
    index_folder(root, index, model=env / "dsh", progress=False)
    store = IndexStore.open(index)
    try:
        ids = np.array([r["id"] for r in store.rows()])
        y = np.array([cls(r["path"], label) for r in store.rows()])
        feats = store.features(ids)

        def ranking(run: Path) -> np.ndarray:
            e = LearnedTransform.from_path(run).float_view(feats)
            sim = e @ e.T
            np.fill_diagonal(sim, -np.inf)
            return np.argsort(-sim, axis=1, kind="stable")[:, :K]

        top = ranking(env / "dsh")
        cases = mistakes(
            [(i, [(j, y[j]) for j in top[i]]) for i in range(len(ids))], dict(enumerate(y))
        )[:4]
        assert len(cases) == 4
        for q, wrong, right in cases:
            store.add_feedback(f"id:{ids[q]}", int(ids[wrong]), False)
            store.add_feedback(f"id:{ids[q]}", int(ids[right]), True)
    finally:
        store.close()
    res = train(
        make_config(**{**cfg.flat(), "feedback": str(index)}),
        env / "dsh-fb",
        progress=False,
        data=data,
        final_eval=False,
    )
    assert res["feedback"]["judgements"] == 8 and res["feedback"]["negative_pairs"] >= 4
    after = ranking(env / "dsh-fb")
    for q, wrong, right in cases:
        r = list(after[q])
        assert r[0] != wrong and rank(r, right) < rank(r, wrong), (q, wrong, right, r)


def test_feedback_errors_are_actionable(data, images, env, tmp_path, capsys):
    root, _, _ = images
    index = tmp_path / "empty"
    index_folder(root, index, size=64, progress=False)
    with pytest.raises(CbirError, match="no feedback stored"):
        load_feedback(index, data.fingerprint)
    store = IndexStore.open(index)
    store.add_feedback("id:1", 2, False)
    store.close()
    for method in ("proxy-anchor", "csq"):
        with pytest.raises(CbirError, match="--feedback trains pair and triplet losses"):
            train(
                make_config(
                    **{**CFG, "method": method, "miner": None, "feedback": str(index), "epochs": 1}
                ),
                tmp_path / method,
                progress=False,
                data=data,
                final_eval=False,
            )
    # through the command line: one actionable line, exit 1
    args = [
        "train",
        "--dataset",
        "fashion-mnist",
        "--protocol",
        "fashion-mnist-zeroshot",
        "--size",
        "64",
        "--train-limit",
        "1500",
        "--query-limit",
        "200",
        "--method",
        "proxy-anchor",
        "--epochs",
        "1",
        "--tsne-points",
        "0",
        "--out",
        str(tmp_path / "cli"),
        "--feedback",
        str(index),
    ]
    capsys.readouterr()
    assert main(args) == 1
    assert "--feedback trains pair and triplet losses" in capsys.readouterr().err
    with pytest.raises(CbirError, match="num_classes=null"):
        train(
            make_config(**{**CFG, "method": "margin", "miner": None, "feedback": str(index)}),
            tmp_path / "m",
            progress=False,
            data=data,
            final_eval=False,
        )
    store = IndexStore.open(index)
    store.add_feedback("id:3", 4, True)
    store.close()
    fb = load_feedback(index, data.fingerprint)
    assert fb.negative.tolist() == [[0, 1]] and fb.positive.tolist() == [[2, 3]]
    fb.negative = fb.negative[:0]  # only "right" judgements: no triplet to learn from
    with pytest.raises(CbirError, match="a right and a wrong result"):
        FeedbackTerm("triplet", None, fb, torch.zeros(4, 1280))
    other = {**data.fingerprint, "preprocess": {**data.fingerprint["preprocess"], "size": 224}}
    with pytest.raises(CbirError, match="train with --size 64"):
        load_feedback(index, other)
    with pytest.raises(CbirError, match="no cbir index here"):
        load_feedback(tmp_path / "nowhere")


def test_pairs_of_groups_relevant_items_and_drops_contradictions():
    # 0~1 and 1~2 relevant: one group {0,1,2}; 3 wrong for 0: 3 x {0,1,2} negatives;
    # 2 marked wrong for 0 contradicts 0~1~2 and is dropped
    group, pos, neg, dropped = pairs_of(
        5, [(0, 1, True), (1, 2, True), (0, 3, False), (0, 2, False)]
    )
    assert group[0] == group[1] == group[2] != group[3] != group[4]
    assert pos.tolist() == [[0, 1], [0, 2], [1, 2]]
    assert neg.tolist() == [[0, 3], [1, 3], [2, 3]]
    assert dropped == [(0, 2)]

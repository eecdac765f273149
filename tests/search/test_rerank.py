"""Re-ranking: alpha-QE with alpha=0 and n=1 is plain search, QE moves the right item up
on a constructed case, k-reciprocal equals the paper's formulas written out here, and the
index path and the evaluation path rank alike (real Fashion-MNIST features)."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from cbir.errors import CbirError
from cbir.eval.metrics import evaluate_retrieval
from cbir.search.rerank import (
    Rerank,
    k_reciprocal_distances,
    make_rerank,
    rerank_scorer,
    search_reranked,
)
from tests.conftest import FASHION_SMALL, needs_fashion

SMALL = FASHION_SMALL


@pytest.fixture(scope="module")
def feats(tmp_path_factory):
    """Unit vectors of 500 real query and 3000 database images, with labels."""
    import os

    os.environ.setdefault("CBIR_CACHE", str(tmp_path_factory.mktemp("cache")))
    from cbir.heads.transform import FrozenTransform
    from cbir.train.trainer import load_data, make_config

    data = load_data(make_config(**SMALL), progress=False)
    t = FrozenTransform(center=True)
    t.fit(data.database)
    return t(data.query), data.query_labels, t(data.database), data.database_labels


def unit(x) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def flat_index(db: np.ndarray) -> faiss.Index:
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(db.shape[1]))
    index.add_with_ids(db, np.arange(len(db), dtype=np.int64))
    return index


# ------------------------------------------------------------------ the paper, written out
def zhong_reference(q: np.ndarray, g: np.ndarray, k1: int, k2: int, lam: float) -> np.ndarray:
    """Zhong et al. (CVPR 2017), eqs. 1-12 for one probe ``q`` and gallery ``g``, loop by loop:
    squared Euclidean distances (each row over its maximum), k-reciprocal sets R(p, k1),
    their expansion by R(c, k1/2) overlapping by more than 2/3, Gaussian weights exp(-d)
    on the expanded set, local query expansion over the k2 nearest, Jaccard distance
    1 - sum(min) / sum(max), and d* = (1 - lambda) d_J + lambda d."""
    X = np.vstack([q[None], g]).astype(np.float64)
    n = len(X)
    dist = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    dist = dist / dist.max(axis=1, keepdims=True)
    rank = np.argsort(dist, axis=1, kind="stable")

    def reciprocal(i: int, k: int) -> list[int]:
        return [int(j) for j in rank[i, : k + 1] if i in rank[j, : k + 1]]

    V = np.zeros((n, n))
    for i in range(n):
        R = reciprocal(i, k1)
        expanded = set(R)
        for c in R:
            Rc = reciprocal(c, int(np.around(k1 / 2)))
            if len(set(Rc) & set(R)) > 2 / 3 * len(Rc):
                expanded |= set(Rc)
        E = sorted(expanded)
        w = np.exp(-dist[i, E])
        V[i, E] = w / w.sum()
    if k2 > 1:
        V = np.stack([V[rank[i, :k2]].mean(0) for i in range(n)])
    jaccard = np.array(
        [1 - np.minimum(V[0], V[j]).sum() / np.maximum(V[0], V[j]).sum() for j in range(1, n)]
    )
    return (1 - lam) * jaccard + lam * dist[0, 1:]


@needs_fashion
@pytest.mark.parametrize("k1,k2,lam", [(20, 6, 0.3), (7, 1, 0.0), (5, 3, 0.9)])
def test_kreciprocal_equals_the_paper(feats, k1, k2, lam):
    q, ql, db, dbl = feats
    g = db[:80]
    for qi in (0, 7, 42):
        want = zhong_reference(q[qi], g, k1, k2, lam)
        X = np.vstack([q[qi][None], g])
        got = k_reciprocal_distances((X @ X.T)[None], k1, k2, lam)[0]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
        # the evaluation path with the whole gallery as shortlist ranks by exactly that
        rr = Rerank("kreciprocal", k1=k1, k2=k2, lam=lam, shortlist=len(g))
        s = rerank_scorer(rr, q, g)(np.array([qi]))[0]
        np.testing.assert_allclose(3.0 - s, want, rtol=0, atol=1e-5)


@needs_fashion
def test_kreciprocal_shortlist_then_original_order(feats):
    q, ql, db, dbl = feats
    rr = Rerank("kreciprocal", shortlist=50)
    rows = np.arange(0, 40)
    s = rerank_scorer(rr, q, db)(rows)
    plain = q[rows] @ db.T
    for r in range(len(rows)):
        order = np.lexsort((np.arange(len(db)), -s[r]))
        short = set(np.lexsort((np.arange(len(db)), -plain[r]))[:50].tolist())
        assert set(order[:50].tolist()) == short  # the shortlist is reordered, not replaced
        rest = order[50:]
        assert (np.diff(plain[r][rest]) <= 0).all()  # the rest keeps its original order
    # the index path returns what the evaluation path ranks first
    D, I = search_reranked(rr, flat_index(db), q[rows], 10, lambda ids: db[ids])
    want = np.stack([np.lexsort((np.arange(len(db)), -row))[:10] for row in s])
    assert np.array_equal(I, want)
    np.testing.assert_allclose(D, 1.0 - (3.0 - np.take_along_axis(s, want, 1)), atol=1e-5)


@needs_fashion
def test_alpha_qe_alpha0_n1_is_plain_search(feats):
    q, ql, db, dbl = feats
    rr = make_rerank("aqe", n=1, alpha=0.0)
    assert rr is not None and rr.mode == "alpha-qe"
    rows = np.arange(len(q))
    assert np.array_equal(rerank_scorer(rr, q, db)(rows), q @ db.T)
    index = flat_index(db)
    D, I = search_reranked(rr, index, q, 10, lambda ids: db[ids])
    D0, I0 = index.search(q, 10)
    assert np.array_equal(I, I0) and np.array_equal(D, D0)
    plain = evaluate_retrieval(q, db, ql, dbl, progress=False)
    same = evaluate_retrieval(q, db, ql, dbl, progress=False, scores=rerank_scorer(rr, q, db))
    assert same["map"] == plain["map"] and same["p@10"] == plain["p@10"]


def test_qe_moves_the_right_item_up():
    """q's top result a lies towards t: averaging q with a ranks t above the distractor d."""
    e = np.eye(3, dtype=np.float32)
    q = unit(e[0])[None]
    a = unit(e[0] + 0.5 * e[1])  # the top result (cos 0.89), relevant
    d = unit(e[0] + 0.8 * e[2])  # a distractor (cos 0.78)
    t = unit(e[0] + 1.0 * e[1])  # relevant, like a (cos 0.71)
    far = unit(np.array([[-1, 0.3, 0.2], [-1, -0.2, 0.5], [0.1, -1, -1]]))
    db = np.vstack([a, d, t, far]).astype(np.float32)
    labels = np.array([1, 0, 1, 0, 0, 0])
    index = flat_index(db)
    _, I0 = index.search(q, 3)
    assert I0[0].tolist() == [0, 1, 2]
    for mode in ("qe", "alpha-qe"):
        rr = make_rerank(mode, n=2)
        _, I = search_reranked(rr, index, q, 3, lambda ids: db[ids])
        assert I[0].tolist() == [0, 2, 1], mode
        before = evaluate_retrieval(q, db, [1], labels, progress=False)
        after = evaluate_retrieval(
            q, db, [1], labels, progress=False, scores=rerank_scorer(rr, q, db)
        )
        assert before["map"] < after["map"] == 1.0


@needs_fashion
def test_each_mode_on_real_features(feats):
    """Every mode runs on 500 x 3,000 real features, all-vs-all too, and changes the figures."""
    q, ql, db, dbl = feats
    plain = evaluate_retrieval(q, db, ql, dbl, progress=False)
    for rr in (Rerank("qe", n=5), Rerank("alpha-qe", n=10), Rerank("kreciprocal", shortlist=60)):
        m = evaluate_retrieval(q, db, ql, dbl, progress=False, scores=rerank_scorer(rr, q, db))
        assert 0.3 < m["map"] < 1 and m["map"] != plain["map"], rr
    # all-vs-all: a query is never its own expansion or shortlist item
    rr = Rerank("kreciprocal", shortlist=30)
    s = rerank_scorer(rr, q, q, exclude_self=True)(np.arange(20))
    assert (s[np.arange(20), np.arange(20)] < 2).all()  # self kept out of the shortlist


def test_options_are_checked():
    assert make_rerank(None) is None
    assert make_rerank("kreciprocal", k1=10).params() == {
        "mode": "kreciprocal",
        "k1": 10,
        "k2": 6,
        "lam": 0.3,
        "shortlist": 100,
    }
    for bad in ({"n": 0}, {"alpha": -1.0}, {"lam": 2.0}, {"k1": 0}, {"shortlist": 0}):
        with pytest.raises(CbirError):
            make_rerank("qe", **bad)
    with pytest.raises(CbirError, match="unknown"):
        make_rerank("diffusion")

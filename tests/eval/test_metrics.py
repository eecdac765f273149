"""cbir.eval.metrics against a brute-force reference (the figures of every order of every
tie group, averaged), against pytorch-metric-learning 2.9.0's AccuracyCalculator, and on
real data (scikit-learn's bundled 8x8 digits)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from sklearn.datasets import load_digits

from cbir.eval.metrics import evaluate_retrieval, hamming_distances, nmi

SCALARS = ("map", "map_ordered", "map@r", "r_precision")


# ------------------------------------------------------------------ brute-force reference
def _rank_figures(rel: np.ndarray, map_at, precision_at, recall_at) -> dict[str, float]:
    """Figures of one fixed ranking (``rel``: relevance in rank order), written as the
    papers' code writes them (DeepHash-pytorch CalcTopMap for AP@k, PML for MAP@R)."""
    R = int(rel.sum())
    out: dict[str, float] = {}

    def ap_top(k: int) -> float:
        tgnd = rel[:k]
        tsum = int(tgnd.sum())
        if tsum == 0:
            return 0.0
        count = np.linspace(1, tsum, tsum)
        tindex = np.flatnonzero(tgnd) + 1.0
        return float(np.mean(count / tindex))

    out["map"] = ap_top(len(rel))
    for k in map_at:
        out[f"map@{k}"] = ap_top(k)
    for k in precision_at:
        out[f"p@{k}"] = rel[:k].sum() / k
        out[f"r@{k}"] = rel[:k].sum() / R
    for k in recall_at:
        out[f"recall@{k}"] = float(rel[:k].any())
    prec = np.cumsum(rel) / np.arange(1, len(rel) + 1)
    out["map@r"] = float((prec[:R] * rel[:R]).sum() / R)
    out["r_precision"] = rel[:R].sum() / R
    return out


def _every_order(dist: np.ndarray, limit: int = 60_000) -> list[np.ndarray]:
    """Every ranking consistent with ascending ``dist``: all permutations of each tie group."""
    groups = [np.flatnonzero(dist == v) for v in np.unique(dist)]
    per_group = [list(itertools.permutations(g)) for g in groups]
    assert math.prod(len(p) for p in per_group) <= limit
    return [np.concatenate(c) for c in itertools.product(*per_group)]


def reference(dist, rel, *, map_at=(), precision_at=(1, 3), recall_at=(1, 2), radius=None,
              exclude_self=False) -> dict[str, float]:  # fmt: skip
    """Mean over queries with a relevant item of each figure averaged over every tie order."""
    acc: dict[str, list[float]] = {}
    for i in range(len(dist)):
        d, r = dist[i].astype(float), rel[i].astype(bool)
        if exclude_self:
            keep = np.arange(len(d)) != i
            d, r = d[keep], r[keep]
        if not r.any():
            continue
        runs = [_rank_figures(r[o], map_at, precision_at, recall_at) for o in _every_order(d)]
        fig = {k: float(np.mean([run[k] for run in runs])) for k in runs[0]}
        fig["map_ordered"] = _rank_figures(r[np.argsort(d, kind="stable")], (), (), ())["map"]
        if radius is not None:
            within = d <= radius
            fig[f"p@h{radius}"] = (within & r).sum() / within.sum() if within.any() else 0.0
            fig[f"r@h{radius}"] = (within & r).sum() / r.sum()
        for k, v in fig.items():
            acc.setdefault(k, []).append(v)
    return {k: float(np.mean(v)) for k, v in acc.items()}


def _codes(rng, n, bits, p_one=0.5):
    b = (rng.random((n, bits)) < p_one).astype(np.uint8)
    return np.packbits(b, axis=1), b


def _bit_distances(qb, dbb):
    return (qb[:, None, :] != dbb[None]).sum(-1)


def _check(got: dict, ref: dict) -> None:
    assert ref and set(ref) <= set(got)
    for k, v in ref.items():
        assert got[k] == pytest.approx(v, abs=1e-12), k


# ------------------------------------------------------------------ against the reference
@pytest.mark.parametrize("seed", range(6))
def test_hamming_codes_with_ties_match_every_order(seed):
    rng = np.random.default_rng(seed)
    q, qb = _codes(rng, 6, 8, 0.3)
    db, dbb = _codes(rng, 8, 8, 0.3)
    ql, dbl = rng.integers(0, 3, 6), rng.integers(0, 3, 8)
    dbl[0] = ql[0]  # at least one query with a relevant item
    kw = dict(map_at=(3, 5), precision_at=(1, 3, 20), recall_at=(1, 2, 4))
    got = evaluate_retrieval(q, db, ql, dbl, metric="hamming", hamming_radius=2, pk_curve=(1, 3, 20),
                             progress=False, **kw)  # fmt: skip
    ref = reference(_bit_distances(qb, dbb), ql[:, None] == dbl[None], radius=2, **kw)
    _check(got, ref)
    assert got["curves"]["p_at_k"] == {
        "k": [1, 3, 20],
        "precision": pytest.approx([ref["p@1"], ref["p@3"], ref["p@20"]]),
    }
    assert got["n_queries"] + got["n_queries_no_relevant"] == 6


@pytest.mark.parametrize("seed", range(5))
def test_float_scores_with_ties_multilabel_match_every_order(seed):
    rng = np.random.default_rng(100 + seed)
    q = rng.integers(1, 4, (5, 2)).astype(np.float32)  # integer scores: many exact ties
    db = rng.integers(0, 4, (8, 2)).astype(np.float32)
    ql = (rng.random((5, 4)) < 0.35).astype(np.uint8)
    dbl = (rng.random((8, 4)) < 0.35).astype(np.uint8)
    ql[0, 0] = dbl[0, 0] = 1
    kw = dict(map_at=(2, 4), precision_at=(1, 3), recall_at=(1, 2, 3))
    got = evaluate_retrieval(q, db, ql, dbl, progress=False, **kw)
    rel = (ql.astype(int) @ dbl.T.astype(int)) > 0
    _check(got, reference(-(q @ db.T), rel, **kw))


@pytest.mark.parametrize("metric", ["hamming", "cosine"])
def test_exclude_self_all_vs_all_matches_every_order(metric):
    rng = np.random.default_rng(7)
    if metric == "hamming":
        x, xb = _codes(rng, 9, 8, 0.35)
        dist = _bit_distances(xb, xb)
    else:
        x = rng.integers(0, 4, (9, 2)).astype(np.float32)
        dist = -(x @ x.T)
    y = rng.integers(0, 3, 9)
    kw = dict(map_at=(2, 5), precision_at=(1, 3), recall_at=(1, 2))
    got = evaluate_retrieval(x, x, y, y, metric=metric, exclude_self=True, progress=False, **kw)
    _check(got, reference(dist, y[:, None] == y[None], exclude_self=True, **kw))
    assert got["n_database"] == 9


def test_tie_aware_ap_by_hand():
    """One query; the top two items tie, one of them relevant: AP = (1 + 1/2) / 2."""
    q = np.array([[1.0, 0.0]], np.float32)
    db = np.array([[1, 0], [1, 0], [0, 1]], np.float32)
    got = evaluate_retrieval(q, db, np.array([0]), np.array([1, 0, 1]), precision_at=(1,),
                             recall_at=(1,), map_at=(1,), progress=False)  # fmt: skip
    assert got["map"] == 0.75 and got["map_ordered"] == 0.5
    assert got["p@1"] == 0.5 and got["recall@1"] == 0.5 and got["map@1"] == 0.5


def test_large_tie_group_crossing_the_cutoffs():
    """A group of 12 tied items (5 relevant) between untied ones, cut-offs inside it.

    Reference: every placement of the 5 relevant items in the group (C(12, 5) = 792
    equally likely relevance patterns), so map@K's hypergeometric sum is checked exactly.
    """
    score = np.array([9, 8] + [5] * 12 + [3, 2, 1], np.float32)  # in rank order
    outside = {0: True, 1: False, 14: True, 15: False, 16: True}
    group = list(range(2, 14))
    kw = dict(map_at=(3, 6, 9, 13), precision_at=(3, 6, 13), recall_at=(3, 4, 8, 10))
    runs = []
    for chosen in itertools.combinations(group, 5):
        rel = np.zeros(len(score), bool)
        rel[[i for i, v in outside.items() if v] + list(chosen)] = True
        runs.append(_rank_figures(rel, kw["map_at"], kw["precision_at"], kw["recall_at"]))
    ref = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
    labels = np.ones(len(score), int)
    labels[[0, 14, 16, 2, 3, 4, 5, 6]] = 0  # class 0 = relevant; any 5 of the group
    perm = np.random.default_rng(0).permutation(len(score))  # database order is irrelevant
    db = np.stack([score, np.zeros_like(score)], 1)[perm]
    got = evaluate_retrieval(np.array([[1.0, 0.0]], np.float32), db, np.array([0]), labels[perm],
                             progress=False, **kw)  # fmt: skip
    _check(got, ref)


def test_queries_without_relevant_items_are_excluded_and_counted():
    db = np.eye(4, dtype=np.float32)
    q = np.eye(4, dtype=np.float32)[[0, 1, 2]]
    got = evaluate_retrieval(q, db, np.array([0, 1, 9]), np.array([0, 1, 2, 3]), progress=False)
    assert (got["n_queries"], got["n_queries_no_relevant"]) == (2, 1)
    assert got["map"] == 1.0 and got["recall@1"] == 1.0  # dividing by 3 queries gives 0.667
    # multi-label: a query with no label at all is relevant to nothing
    ql = np.array([[1, 0, 0], [0, 0, 0], [0, 1, 1]], np.uint8)
    dbl = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], np.uint8)
    got = evaluate_retrieval(q, db, ql, dbl, progress=False)
    assert (got["n_queries"], got["n_queries_no_relevant"]) == (2, 1)
    # codes; and no query with a relevant item at all gives NaN, not a fake 0
    codes = np.packbits(np.eye(8, dtype=np.uint8)[:4], axis=1)
    got = evaluate_retrieval(codes, codes, np.array([0, 1, 2, 3]), np.array([4, 5, 6, 7]),
                             metric="hamming", progress=False)  # fmt: skip
    assert got["n_queries"] == 0 and got["n_queries_no_relevant"] == 4 and math.isnan(got["map"])


@pytest.mark.parametrize("metric", ["hamming", "cosine"])
def test_chunk_size_does_not_change_results(metric):
    rng = np.random.default_rng(3)
    if metric == "hamming":
        q, _ = _codes(rng, 37, 16)
        db, _ = _codes(rng, 50, 16)
        ql, dbl = rng.integers(0, 4, 37), rng.integers(0, 4, 50)
    else:  # integer-valued rows: scores exact whatever BLAS does, with ties
        q = rng.integers(-2, 3, (37, 3)).astype(np.float32)
        db = rng.integers(-2, 3, (50, 3)).astype(np.float32)
        ql, dbl = (rng.random((37, 3)) < 0.4), (rng.random((50, 3)) < 0.4)
    runs = [evaluate_retrieval(q, db, ql, dbl, metric=metric, map_at=(10,), chunk_size=c, progress=False)
            for c in (1, 7, 1000)]  # fmt: skip
    scalar = [
        k for k, v in runs[0].items() if isinstance(v, float | int) and not isinstance(v, bool)
    ]
    assert "map@10" in scalar and "map" in scalar
    for run in runs[1:]:
        assert {k: run[k] for k in scalar} == {k: runs[0][k] for k in scalar}
        for curve, key in (("pr", "precision"), ("pr", "recall"), ("p_at_k", "precision")):
            np.testing.assert_allclose(
                run["curves"][curve][key], runs[0]["curves"][curve][key], atol=1e-12
            )


# ------------------------------------------------------------------ curves and distances
def test_hamming_distances_match_unpacked_bits():
    rng = np.random.default_rng(1)
    for nbytes in (1, 3, 8, 9, 32):  # 8 .. 256 bits, padded words, uint16 results
        q, qb = _codes(rng, 5, nbytes * 8)
        db, dbb = _codes(rng, 11, nbytes * 8)
        assert np.array_equal(hamming_distances(q, db), _bit_distances(qb, dbb))
    with pytest.raises(ValueError, match="uint8"):
        hamming_distances(q.astype(np.int64), db)


def test_pr_curves_match_direct_counts():
    rng = np.random.default_rng(9)
    q, qb = _codes(rng, 30, 16)
    db, dbb = _codes(rng, 200, 16)
    ql, dbl = rng.integers(0, 3, 30), rng.integers(0, 3, 200)
    got = evaluate_retrieval(q, db, ql, dbl, metric="hamming", progress=False)
    d, rel = _bit_distances(qb, dbb), ql[:, None] == dbl[None]
    pr = got["curves"]["pr"]
    assert pr["threshold"] == list(range(17))
    for i, h in enumerate(pr["threshold"]):
        within = d <= h
        hits = (within & rel).sum(1)
        prec = np.where(within.sum(1) > 0, hits / np.maximum(within.sum(1), 1), 0.0)
        assert pr["precision"][i] == pytest.approx(prec.mean(), abs=1e-12)
        assert pr["recall"][i] == pytest.approx((hits / rel.sum(1)).mean(), abs=1e-12)
    assert pr["recall"][-1] == pytest.approx(1.0)
    # floats: thresholds on the score, everything scoring >= t retrieved
    x = rng.standard_normal((40, 8)).astype(np.float32)
    y = rng.integers(0, 4, 40)
    got = evaluate_retrieval(x[:15], x, y[:15], y, pr_points=9, progress=False)
    pr = got["curves"]["pr"]
    s = x[:15] @ x.T
    rel = y[:15, None] == y[None]
    assert len(pr["threshold"]) == 9 and np.all(np.diff(pr["threshold"]) < 0)
    for i, t in enumerate(pr["threshold"]):
        ret = s >= np.float32(t)
        hits = (ret & rel).sum(1)
        prec = np.where(ret.sum(1) > 0, hits / np.maximum(ret.sum(1), 1), 0.0)
        assert pr["precision"][i] == pytest.approx(prec.mean(), abs=1e-12)
        assert pr["recall"][i] == pytest.approx((hits / rel.sum(1)).mean(), abs=1e-12)


def test_real_digits_codes_against_seeded_random_tie_breaking():
    """Real data with large tie groups (16-bit sign codes of the 8x8 digits): the closed
    forms agree with the average over 200 random tie-breaks, within 5 standard errors."""
    X, y = load_digits(return_X_y=True)
    X = X - X.mean(0)
    rng = np.random.default_rng(0)
    bits = (X @ rng.standard_normal((64, 16)) > 0).astype(np.uint8)
    codes = np.packbits(bits, axis=1)
    q, db, yq, ydb = codes[:40], codes[300:], y[:40], y[300:]
    kw = dict(map_at=(50,), precision_at=(10, 100), recall_at=(1, 4))
    got = evaluate_retrieval(q, db, yq, ydb, metric="hamming", progress=False, **kw)
    d = _bit_distances(bits[:40], bits[300:])
    rel = yq[:, None] == ydb[None]
    samples = []
    for _ in range(200):
        order = np.lexsort((rng.random(d.shape), d), axis=1)
        ranked = np.take_along_axis(rel, order, 1)
        figs = [_rank_figures(r, kw["map_at"], kw["precision_at"], kw["recall_at"]) for r in ranked]
        samples.append({k: np.mean([f[k] for f in figs]) for k in figs[0]})
    for k in samples[0]:
        vals = np.array([s[k] for s in samples])
        se = vals.std() / np.sqrt(len(vals))
        assert abs(got[k] - vals.mean()) <= 5 * se + 1e-12, (k, got[k], vals.mean(), se)
    # the ordered figure is a plain stable sort, and ties do matter here
    ordered = np.mean([_rank_figures(r, (), (), ())["map"]
                       for r in np.take_along_axis(rel, np.argsort(d, 1, kind="stable"), 1)])  # fmt: skip
    assert got["map_ordered"] == pytest.approx(ordered, abs=1e-12)
    assert got["map"] != pytest.approx(got["map_ordered"], abs=1e-6)


# ------------------------------------------------------------------ pytorch-metric-learning
def _digits_embeddings():
    X, y = load_digits(return_X_y=True)
    X = X - X.mean(0)
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    return X, y


def test_matches_pytorch_metric_learning_on_digits():
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    X, y = _digits_embeddings()
    q, r, yq, yr = X[:400], X[400:], y[:400], y[400:]
    # PML ranks by faiss L2, the same order as cosine on unit vectors; with k = the whole
    # reference set its mean_average_precision is mAP@all (it divides by R)
    calc = AccuracyCalculator(
        include=("mean_average_precision", "mean_average_precision_at_r", "r_precision", "precision_at_1", "NMI"),
        k=len(r), device=torch.device("cpu"),
    )  # fmt: skip
    pml = calc.get_accuracy(
        torch.from_numpy(q), torch.from_numpy(yq), torch.from_numpy(r), torch.from_numpy(yr)
    )
    ours = evaluate_retrieval(q, r, yq, yr, precision_at=(1,), recall_at=(1,), progress=False)
    assert ours["map"] == pytest.approx(pml["mean_average_precision"], abs=1e-6)
    assert ours["map@r"] == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(pml["r_precision"], abs=1e-6)
    assert ours["p@1"] == pytest.approx(pml["precision_at_1"], abs=1e-6)
    assert ours["recall@1"] == pytest.approx(pml["precision_at_1"], abs=1e-6)
    # NMI: the same k-means (faiss, niter=20, PML leaves faiss's seed 1234), same score
    assert nmi(q, yq, seed=1234) == pytest.approx(pml["NMI"], abs=1e-12)


def test_nmi_matches_pytorch_metric_learning_on_all_digits():
    """All 1,797 digits: k-means has not converged after 20 iterations (25 gives another
    clustering), so only PML's exact configuration reproduces its NMI."""
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    X, y = _digits_embeddings()
    calc = AccuracyCalculator(include=("NMI",), device=torch.device("cpu"))
    pml = calc.get_accuracy(torch.from_numpy(X), torch.from_numpy(y))
    assert nmi(X, y, seed=1234) == pytest.approx(pml["NMI"], abs=1e-12)


def test_matches_pytorch_metric_learning_all_vs_all():
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    X, y = _digits_embeddings()
    X, y = X[:500], y[:500]
    calc = AccuracyCalculator(include=("mean_average_precision", "mean_average_precision_at_r", "r_precision",
                                       "precision_at_1"), k=len(X) - 1, device=torch.device("cpu"))  # fmt: skip
    pml = calc.get_accuracy(torch.from_numpy(X), torch.from_numpy(y))
    ours = evaluate_retrieval(X, X, y, y, exclude_self=True, precision_at=(1,), progress=False)
    assert ours["map"] == pytest.approx(pml["mean_average_precision"], abs=1e-6)
    assert ours["map@r"] == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(pml["r_precision"], abs=1e-6)
    assert ours["p@1"] == pytest.approx(pml["precision_at_1"], abs=1e-6)


def test_nmi_on_separated_and_shuffled_labels():
    X, y = _digits_embeddings()
    centres = np.eye(10, 64, dtype=np.float32) * 10
    assert nmi(centres[y] + 0.01 * X, y) > 0.9  # k-means may still split a cluster
    shuffled = np.random.default_rng(0).permutation(y)
    assert nmi(X, shuffled) < 0.05 < nmi(X, y)


# ------------------------------------------------------------------ errors
def test_bad_inputs_are_refused_with_a_reason():
    x = np.eye(3, dtype=np.float32)
    y = np.arange(3)
    with pytest.raises(ValueError, match="metric"):
        evaluate_retrieval(x, x, y, y, metric="l2")
    with pytest.raises(ValueError, match="uint8"):
        evaluate_retrieval(x, x, y, y, metric="hamming")
    with pytest.raises(ValueError, match="one row per item"):
        evaluate_retrieval(x, x, y[:2], y)
    with pytest.raises(ValueError, match="all-vs-all"):
        evaluate_retrieval(x[:2], x, y[:2], y, exclude_self=True)
    with pytest.raises(ValueError, match="NaN"):
        evaluate_retrieval(x * np.nan, x, y, y)
    with pytest.raises(ValueError, match="positive"):
        evaluate_retrieval(x, x, y, y, map_at=(0,))

"""Each code kind: make, write/read, add, remove, search, rescore a subset; the registry."""

from __future__ import annotations

import types

import numpy as np
import pytest
import scipy.sparse as sp

from cbir.codes.base import CodeKind
from cbir.codes.bits import hamming, pack_bits
from cbir.codes.registry import KINDS, code_kind
from cbir.codes.sparse import sparse_codes
from cbir.errors import CbirError

DIM = {"float": 24, "binary": 64, "sparse": 96}


def make_codes(kind: str, n: int, seed: int = 0):
    """Codes of ``kind`` for ``n`` random head outputs (as a learned head makes them)."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((n, DIM[kind])).astype(np.float32)
    if kind == "binary":
        return pack_bits(u)
    if kind == "sparse":
        return sparse_codes(u, "topk", 8)
    return u / np.linalg.norm(u, axis=1, keepdims=True)


def brute_force(code: CodeKind, q, db, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by (score desc, id asc) of the kind's exact scores."""
    s = code.scores(q, db, DIM[code.name]).astype(np.float64)
    out_s, out_i = [], []
    for row in s:
        o = np.lexsort((ids, -row))[:k]
        out_s.append(row[o])
        out_i.append(ids[o])
    return np.array(out_s), np.array(out_i)


def rows(codes, sel):
    return codes[sel]


@pytest.mark.parametrize("name", ["float", "binary", "sparse"])
def test_round_trip_add_remove_search(name, tmp_path):
    code = code_kind(name)
    n, k = 300, 10
    db = make_codes(name, n)
    ids = np.arange(1000, 1000 + n, dtype=np.int64)[::-1].copy()
    q = make_codes(name, 5, seed=1)
    index = code.make(code.default_index_type, DIM[name])
    code.train(index, db, code.default_index_type)
    code.add(index, db, ids)
    assert sorted(code.ids(index).tolist()) == sorted(ids.tolist())
    scores, got, dist = code.search(index, q, k, DIM[name])
    want_s, want_i = brute_force(code, q, db, ids, k)
    assert np.allclose(scores, want_s, atol=1e-5)
    if name == "binary":  # exact scans order ties by id
        assert np.array_equal(got, want_i)
        row_of = {int(i): r for r, i in enumerate(ids)}
        full = hamming(q, db)
        want_d = [[full[qi, row_of[int(i)]] for i in got[qi]] for qi in range(len(q))]
        assert dist.tolist() == want_d
        assert np.allclose(scores, 1.0 - dist / DIM[name])
    else:
        assert dist is None
        assert np.array_equal(got, want_i)

    path = tmp_path / f"index.{code.ext}"
    code.write(index, path)
    back = code.read(path)
    assert np.array_equal(np.sort(code.ids(back)), np.sort(ids))
    s2, i2, _ = code.search(back, q, k, DIM[name])
    assert np.array_equal(i2, got) and np.allclose(s2, scores)

    gone = got[:, 0]
    assert code.remove(back, np.unique(gone))
    _, i3, _ = code.search(back, q, k, DIM[name])
    assert not np.isin(i3, gone).any()
    keep = ~np.isin(ids, gone)
    _, want_after = brute_force(code, q, db[keep], ids[keep], k)
    assert np.array_equal(i3, want_after)


@pytest.mark.parametrize("name", ["float", "binary", "sparse"])
def test_rescore_a_subset_is_exact(name):
    code = code_kind(name)
    db = make_codes(name, 200, seed=2)
    ids = np.arange(200, dtype=np.int64) * 3
    q = make_codes(name, 4, seed=3)
    sel = np.arange(0, 200, 7)
    s, i, _ = code.rescore(q, rows(db, sel), ids[sel], 5, DIM[name])
    want_s, want_i = brute_force(code, q, rows(db, sel), ids[sel], 5)
    assert np.array_equal(i, want_i) and np.allclose(s, want_s, atol=1e-5)
    s1, i1, _ = code.rescore(q, rows(db, sel[:3]), ids[sel[:3]], 5, DIM[name])
    assert i1.shape == (4, 3)  # never more than the subset


def test_float_filters_inside_faiss():
    code = code_kind("float")
    db = make_codes("float", 100)
    ids = np.arange(100, dtype=np.int64)
    index = code.make("Flat", DIM["float"])
    code.add(index, db, ids)
    q = make_codes("float", 3, seed=5)
    allowed = np.arange(0, 100, 10)
    s, i, d = code.search_among(index, q, 4, allowed)
    assert np.isin(i, allowed).all() and d is None
    _, want = brute_force(code, q, db[allowed], allowed, 4)
    assert np.array_equal(i, want)
    assert code_kind("binary").search_among(None, q, 4, allowed) is None


def test_registry_and_conventions():
    subic = {
        f"subic-k{2**b}" for b in range(1, 9)
    }  # one per block size (tests/codes/test_subic.py)
    assert set(KINDS) == {"float", "binary", "sparse"} | subic
    assert code_kind(types.SimpleNamespace(kind="binary")) is KINDS["binary"]
    with pytest.raises(CbirError, match="unknown code kind 'ternary'"):
        code_kind("ternary")
    assert KINDS["binary"].describe(64) == "64 bits" and KINDS["float"].describe(128) == "128-d"
    assert [KINDS[n].ext for n in ("float", "binary", "sparse")] == ["faiss", "bidx", "sidx"]
    assert KINDS["binary"].metric == "hamming" and not KINDS["binary"].rerankable
    assert not KINDS["sparse"].shardable and KINDS["sparse"].milvus_vector is None
    scores, dist = KINDS["binary"].to_scores(np.array([[0, 16, 64]], np.int32), 64)
    assert scores.tolist() == [[1.0, 0.75, 0.0]] and dist.tolist() == [[0, 16, 64]]
    assert isinstance(KINDS["sparse"].empty(10), sp.csr_matrix)
    assert KINDS["binary"].empty(64).shape == (0, 8)
    with pytest.raises(CbirError, match="multiple of 8"):
        KINDS["binary"].check_rows(np.zeros((1, 1), np.uint8), 12)
    with pytest.raises(CbirError, match="expected"):
        KINDS["float"].check_rows(np.zeros((2, 3)), 4)


def test_encode_through_a_head_like_transform():
    rng = np.random.default_rng(7)
    head = types.SimpleNamespace(  # a head whose outputs are its inputs
        outputs=lambda x: np.asarray(x, np.float32),
        ckpt={"sparse": {"activation": "topk", "k": 3}},
        dim=16,
    )
    x = rng.standard_normal((6, 16)).astype(np.float32)
    f = KINDS["float"].encode(head, x)
    assert np.allclose(np.linalg.norm(f, axis=1), 1.0)
    assert np.array_equal(KINDS["binary"].encode(head, x), pack_bits(x))
    s = KINDS["sparse"].encode(head, x)
    assert s.shape == (6, 16) and (s.getnnz(1) <= 3).all()
    assert np.allclose(KINDS["sparse"].float_view(head, x), s.toarray())

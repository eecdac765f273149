"""SUBIC codes (cbir.codes.subic): the index's asymmetric and symmetric scores against a
direct numpy computation, filtered search, removal, and the file round trip."""

from __future__ import annotations

import numpy as np
import pytest

from cbir.codes.registry import code_kind
from cbir.codes.subic import active, block_softmax, one_hot
from cbir.errors import CbirError


def _rows(n: int, m: int, k: int, seed: int) -> np.ndarray:
    return block_softmax(np.random.default_rng(seed).normal(size=(n, m * k)) * 3, k)


def _direct(q: np.ndarray, db: np.ndarray, m: int, k: int) -> np.ndarray:
    """sum over blocks of q's value at db's active index, / m (written out, loops)."""
    out = np.zeros((len(q), len(db)))
    for i in range(len(q)):
        for j in range(len(db)):
            for b in range(m):
                blk = db[j, b * k : (b + 1) * k]
                out[i, j] += q[i, b * k + int(np.argmax(blk))]
    return out / m


@pytest.mark.parametrize("k", [256, 16, 4])
def test_asymmetric_search_is_the_papers_score(k):
    m = 4
    kind = code_kind(f"subic-k{k}")
    db, q = _rows(300, m, k, 0), _rows(5, m, k, 1)
    ids = np.arange(100, 400)
    index = kind.make("ADC", m * k)
    kind.add(index, db, ids)
    scores, got, dist = kind.search(index, q, 20, m * k)
    want = _direct(q, db, m, k)
    assert dist is None
    for i in range(len(q)):
        np.testing.assert_allclose(scores[i], np.sort(want[i])[::-1][:20], atol=1e-5)
        np.testing.assert_allclose(want[i][got[i] - 100], scores[i], atol=1e-5)
    np.testing.assert_allclose(kind.scores(q, db, m * k), want, atol=1e-5)
    assert (index.codes() == active(db, k)).all()  # one byte per block: the active index


def test_symmetric_search_counts_agreeing_blocks():
    m, k = 6, 16
    kind = code_kind("subic-k16")
    db, q = _rows(200, m, k, 2), _rows(4, m, k, 3)
    index = kind.make("SDC", m * k)
    kind.add(index, db, np.arange(200))
    scores, ids, _ = kind.search(index, q, 10, m * k)
    agree = (active(q, k)[:, None, :] == active(db, k)[None, :, :]).mean(2)
    np.testing.assert_allclose(scores, np.take_along_axis(agree, ids, 1), atol=1e-6)
    assert np.allclose(scores[:, 0], agree.max(1))
    np.testing.assert_allclose(kind.scores(one_hot(q, k), db, m * k), agree, atol=1e-6)


def test_filtered_removal_and_file_round_trip(tmp_path):
    m, k = 8, 256
    kind = code_kind("subic-k256")
    db, q = _rows(400, m, k, 4), _rows(3, m, k, 5)
    ids = np.arange(1000, 1400)
    index = kind.make("ADC", m * k)
    kind.add(index, db, ids)
    allowed = ids[::7]
    s, got, _ = kind.search_among(index, q, 5, allowed)
    want = _direct(q, db[::7], m, k)
    for i in range(len(q)):
        assert set(got[i]) <= set(allowed)
        np.testing.assert_allclose(s[i], np.sort(want[i])[::-1][:5], atol=1e-5)
    rs, rids, _ = kind.rescore(q, db[::7], allowed, 5, m * k)
    np.testing.assert_allclose(rs, s, atol=1e-5)
    path = tmp_path / "index-00000001.subic"
    kind.write(index, path)
    back = kind.read(path)
    assert back.mode == "ADC" and back.k == k and back.ntotal == 400
    np.testing.assert_array_equal(kind.search(back, q, 10)[1], kind.search(index, q, 10)[1])
    assert kind.remove(back, ids[:100])
    assert sorted(kind.ids(back)) == ids[100:].tolist()
    assert not np.isin(kind.search(back, q, 50)[1], ids[:100]).any()
    (tmp_path / "bad.subic").write_bytes(b"not an index")
    with pytest.raises(CbirError, match="not a SUBIC index"):
        kind.read(tmp_path / "bad.subic")


def test_kinds_and_index_types():
    kind = code_kind("subic-k256")
    assert kind.describe(2048) == "8 blocks of 256 (64 bits)"
    assert not kind.rerankable and not kind.shardable and kind.milvus_vector is None
    with pytest.raises(CbirError, match="ADC"):
        kind.make("BFlat", 2048)
    with pytest.raises(CbirError, match="blocks of 256"):
        kind.make("ADC", 100)
    with pytest.raises(CbirError, match="unknown code kind"):
        code_kind("subic-k3")

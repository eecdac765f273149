"""float16 feature segments (``--feature-dtype float16``): recorded, read back as float32,
searched like float32, checked, compacted streaming, and never mixed with float32."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cbir.errors import CbirError
from cbir.index import segments, vector_index
from cbir.index.check import check_index
from cbir.index.store import IndexStore
from cbir.pipeline import index_folder
from cbir.search.searcher import Searcher


@contextlib.contextmanager
def opened(idx: Path):
    store = IndexStore.open(idx)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture(scope="module")
def pair(tmp_path_factory, photos_dir) -> tuple[Path, Path, Path]:
    """(photos, float32 index, float16 index) of the same real photos, at size 64."""
    root = tmp_path_factory.mktemp("dtype")
    photos = root / "photos"
    shutil.copytree(photos_dir, photos)
    f32, f16 = root / "f32", root / "f16"
    index_folder(photos, f32, size=64, workers=1, progress=False)
    index_folder(photos, f16, size=64, workers=1, progress=False, feature_dtype="float16")
    return photos, f32, f16


def _segment_dtypes(idx: Path) -> set[str]:
    return {str(np.load(p, mmap_mode="r").dtype) for p in idx.glob("features-*.npy")}


def test_recorded_and_stored_as_float16(pair):
    _, f32, f16 = pair
    assert _segment_dtypes(f16) == {"float16"} and _segment_dtypes(f32) == {"float32"}
    with opened(f16) as s16, opened(f32) as s32:
        assert s16.config["feature_dtype"] == "float16"
        assert "feature_dtype" not in s32.config  # float32 indexes keep the old config
        assert s16.feature_dtype == np.float16 and s32.feature_dtype == np.float32
        ids = [r["id"] for r in s32.rows()]
        assert ids == [r["id"] for r in s16.rows()]
        a, b = s32.features(ids), s16.features(ids)
        assert b.dtype == np.float32  # read back as float32
        assert np.allclose(a, b, rtol=2**-10, atol=1e-4) and not np.array_equal(a, b)
        got = np.concatenate([f for _, f in s16.iter_features()])
        assert got.dtype == np.float32 and np.array_equal(got, b)
    assert (f16 / "meta.sqlite").exists()
    size = lambda d: sum(p.stat().st_size for p in d.glob("features-*.npy"))  # noqa: E731
    assert size(f16) < 0.6 * size(f32)


def test_search_matches_float32(pair):
    _, f32, f16 = pair
    a, b = Searcher(f32), Searcher(f16)
    try:
        ids = [r["id"] for r in a.store.rows()]
        for id_ in ids:
            ha, hb = a.search_id(id_, k=5), b.search_id(id_, k=5)
            assert ha[0].id == hb[0].id == id_
            assert [h.id for h in ha][:3] == [h.id for h in hb][:3]
            assert np.allclose([h.score for h in ha], [h.score for h in hb], atol=2e-3)
    finally:
        a.close()
        b.close()


def test_check_passes_and_catches_a_float32_segment(pair, tmp_path):
    _, _, f16 = pair
    report = check_index(f16)
    assert report.ok, report.errors
    bad = tmp_path / "bad"
    shutil.copytree(f16, bad)
    seg = sorted(bad.glob("features-*.npy"))[0]
    np.save(seg, np.load(seg).astype(np.float32))  # a float32 segment in a float16 index
    report = check_index(bad)
    assert not report.ok and any("float16" in e for e in report.errors)
    with opened(bad) as store, pytest.raises(CbirError, match="not float16"):
        store.features([store.rows()[0]["id"]])


def test_mixing_refused_and_updates_keep_float16(pair, tmp_path, photos_dir):
    photos, _, f16 = pair
    idx = tmp_path / "f16"
    shutil.copytree(f16, idx)
    with pytest.raises(CbirError, match="stores float16 features, not --feature-dtype float32"):
        index_folder(photos, idx, progress=False, feature_dtype="float32")
    cli = [sys.executable, "-m", "cbir.cli", "index", str(photos), "--index", str(idx)]
    out = subprocess.run([*cli, "--feature-dtype", "float32"], capture_output=True, text=True)
    assert out.returncode == 1 and "--feature-dtype float32" in out.stderr
    f32 = pair[1]
    with pytest.raises(CbirError, match="stores float32 features, not --feature-dtype float16"):
        index_folder(photos, f32, progress=False, feature_dtype="float16")
    with pytest.raises(CbirError, match="choose one of float32, float16"):
        index_folder(photos, tmp_path / "new", progress=False, feature_dtype="float64")
    # an update without the option adds float16 segments to the float16 index
    extra = tmp_path / "extra"
    extra.mkdir()
    src = sorted(p for p in photos.rglob("*.jpg"))[0]
    from PIL import Image

    Image.open(src).rotate(90, expand=True).save(extra / "turned.png")
    summary = index_folder(extra, idx, progress=False, prune=False)
    assert summary.indexed == 1
    assert _segment_dtypes(idx) == {"float16"}
    assert check_index(idx).ok


def test_compact_streams_in_blocks_and_keeps_dtype(pair, tmp_path, monkeypatch):
    _, _, f16 = pair
    idx = tmp_path / "f16"
    shutil.copytree(f16, idx)
    with opened(idx) as store:
        ids = [r["id"] for r in store.rows()]
        before = store.features(ids)
        store.lock()
        store.delete(ids[:2])
        monkeypatch.setattr(segments, "BLOCK_ROWS", 3)  # several blocks per segment
        parts = list(store.iter_features())
        assert max(len(i) for i, _ in parts) == 3 and sum(len(i) for i, _ in parts) == len(ids) - 2
        assert store.compact(force=True)
        store.unlock()
        assert store.features(ids[2:]).tobytes() == before[2:].tobytes()
    assert _segment_dtypes(idx) == {"float16"} and len(list(idx.glob("features-*.npy"))) == 1
    assert check_index(idx, hashes=False).ok


def test_train_sample_reads_only_the_first_rows(pair):
    _, f32, _ = pair
    with opened(f32) as store:
        ids = [r["id"] for r in store.rows()]
        first = vector_index._first_features(store, 4)
        assert first is not None and first.shape == (4, 1280)
        assert np.array_equal(first, store.features(ids[:4]))


def test_float16_range_refused():
    with pytest.raises(CbirError, match="beyond the range of float16"):
        segments.as_stored(np.array([[1e6, 0.0]], np.float32), np.dtype(np.float16))
    nan = segments.as_stored(np.array([[np.nan, 1.0]], np.float32), np.dtype(np.float16))
    assert np.isnan(nan[0, 0])  # a NaN row (a failed image) stays NaN, as in float32

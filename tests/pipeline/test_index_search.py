"""End to end on real photos: index, augmented copies found at rank 1, incremental runs."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbir.errors import CbirError
from cbir.index.store import IndexStore
from cbir.pipeline import index_folder
from cbir.search.searcher import Searcher


def augment(path: Path, out: Path, kind: str) -> Path:
    img = Image.open(path).convert("RGB")
    w, h = img.size
    if kind == "crop":
        img = img.crop((int(w * 0.08), int(h * 0.06), int(w * 0.92), int(h * 0.95)))
    elif kind == "resize":
        img = img.resize((w // 2, h // 2), Image.BILINEAR)
    elif kind == "rotate":
        img = img.rotate(8, resample=Image.BICUBIC, expand=False, fillcolor=(128, 128, 128))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=60 if kind == "jpeg" else 85)  # always a JPEG re-encode
    out.write_bytes(buf.getvalue())
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory, photos_dir):
    idx = tmp_path_factory.mktemp("idx") / "index"
    summary = index_folder(photos_dir, idx, progress=False)
    return idx, summary


def test_first_run_indexes_all(built, photos_dir):
    idx, summary = built
    n = len(list(photos_dir.rglob("*.*")))
    assert summary.indexed == n == summary.total and not summary.failed
    with _store(idx) as store:
        assert store.count() == n


class _store:
    def __init__(self, p):
        self.s = IndexStore.open(p)

    def __enter__(self):
        return self.s

    def __exit__(self, *a):
        self.s.close()


@pytest.mark.parametrize("kind", ["crop", "resize", "jpeg", "rotate"])
def test_augmented_copy_comes_back_at_rank_1(built, photos_dir, tmp_path, kind):
    idx, _ = built
    s = Searcher(idx)
    misses = []
    for src in sorted(photos_dir.rglob("*.*")):
        q = augment(src, tmp_path / f"q_{src.stem}.jpg", kind)
        hits = s.search_file(q, k=3)
        if Path(hits[0].path) != src:
            misses.append((src.name, hits[0].path))
    s.close()
    assert not misses, misses


def test_incremental_run_embeds_nothing_unchanged_and_tracks_changes(photos_copy, tmp_path):
    idx = tmp_path / "index"
    first = index_folder(photos_copy, idx, progress=False)
    n = first.total
    again = index_folder(photos_copy, idx, progress=False)
    assert (again.indexed, again.unchanged, again.removed) == (0, n, 0)

    files = sorted(photos_copy.rglob("*.*"))
    os.utime(files[0], ns=(1, 1))  # touched: same content, new mtime -> hashed, not embedded
    gone = files[1]
    gone_id = Searcher(idx).store.row_by_path(str(gone))["id"]
    gone.unlink()  # deleted
    Image.new("RGB", (64, 64), (200, 10, 10)).save(files[2])  # changed content, same path
    shutil.copy(files[3], photos_copy / "copy_of_3")  # a copy: content already indexed
    (photos_copy / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    old_id = Searcher(idx).store.row_by_path(str(files[2]))["id"]

    third = index_folder(photos_copy, idx, progress=False)
    assert third.touched == 1 and third.removed == 1
    assert third.indexed == 2 and third.reused == 1  # changed file embedded; copy reused
    assert [f["path"] for f in third.failed] == [str(photos_copy / "corrupt.jpg")]
    assert third.failed[0]["reason"] in ("truncated", "corrupt")
    assert third.total == n  # -1 deleted, +1 copy

    s = Searcher(idx)
    assert s.store.row_by_path(str(files[2]))["id"] == old_id  # ids are stable
    hits = s.search_file(files[3], k=n)
    paths = [h.path for h in hits]
    assert str(gone) not in paths and all(h.id != gone_id for h in hits)
    assert {paths[0], paths[1]} == {str(files[3]), str(photos_copy / "copy_of_3")}
    red = s.search_file(files[2], k=1)[0]
    assert red.path == str(files[2]) and red.score > 0.999
    s.close()


@pytest.mark.parametrize("index_type", ["HNSW16", "IVF2,Flat"])
def test_other_index_types_and_deletes(photos_copy, tmp_path, index_type):
    idx = tmp_path / "index"
    index_folder(photos_copy, idx, index_type=index_type, progress=False)
    victim = sorted(photos_copy.rglob("*.png"))[0]
    victim.unlink()
    summary = index_folder(photos_copy, idx, progress=False)
    assert summary.removed == 1
    s = Searcher(idx)
    hits = s.search_file(sorted(photos_copy.rglob("*.jpg"))[0], k=50)
    assert str(victim) not in [h.path for h in hits] and len(hits) == summary.total
    s.close()


def test_clear_errors(photos_dir, tmp_path):
    with pytest.raises(CbirError, match="no images found"):
        (tmp_path / "empty").mkdir()
        index_folder(tmp_path / "empty", tmp_path / "i0", progress=False)
    with pytest.raises(CbirError, match="needs at least 1024 vectors"):
        index_folder(photos_dir, tmp_path / "i1", index_type="IVF1024,Flat", progress=False)
    with pytest.raises(CbirError, match="not a faiss index_factory"):
        index_folder(photos_dir, tmp_path / "i2", index_type="Bogus99", progress=False)
    with pytest.raises(CbirError, match="no cbir index"):
        Searcher(tmp_path / "missing")


def test_index_built_at_other_size_refuses_mismatch(photos_dir, tmp_path):
    idx = tmp_path / "index"
    index_folder(photos_dir, idx, size=128, progress=False)
    with pytest.raises(CbirError, match="--size 128"):
        index_folder(photos_dir, idx, size=224, progress=False)
    s = Searcher(idx)
    assert s.backbone.preprocess.size == 128  # queries use the index's own preprocessing
    s.close()


def test_lost_faiss_file_is_rebuilt_from_features(photos_copy, tmp_path):
    idx = tmp_path / "index"
    index_folder(photos_copy, idx, progress=False)
    for f in idx.glob("index-*.faiss"):
        f.unlink()
    s = Searcher(idx)
    src = sorted(photos_copy.rglob("*.png"))[0]
    assert s.search_file(src, k=1)[0].path == str(src)
    s.close()


def test_features_are_stored_exactly(photos_copy, tmp_path):
    from cbir.backbones.efficientnet_lite import get_backbone
    from cbir.data.images import open_image

    idx = tmp_path / "index"
    index_folder(photos_copy, idx, progress=False)
    s = Searcher(idx)
    row = s.store.rows()[0]
    bb = get_backbone(224)
    direct, _ = bb.run(bb.preprocess(open_image(row["path"], draft_size=224))[None])
    np.testing.assert_allclose(s.store.features([row["id"]]), direct, rtol=1e-5, atol=1e-5)
    s.close()

"""check_index and `cbir check` on real indexes, whole and damaged in the ways crashes and
bad disks damage them."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import faiss
import numpy as np
import pytest

from cbir.cli import main
from cbir.index.check import check_index
from cbir.index.store import IndexStore


def _meta(idx: Path, key: str):
    store = IndexStore.open(idx)
    try:
        return store.get_meta(key)
    finally:
        store.close()


def _faiss_path(idx: Path) -> Path:
    return idx / _meta(idx, "faiss")["file"]


def _listing(idx: Path) -> dict[str, tuple[int, int]]:
    return {
        p.name: (p.stat().st_size, p.stat().st_mtime_ns)
        for p in idx.iterdir()
        if not p.name.startswith("meta.sqlite-")
    }


def test_a_whole_index_is_ok_and_the_check_changes_nothing(small_index):
    _, idx = small_index
    before = _listing(idx)
    rep = check_index(idx)
    assert rep.ok, rep.errors
    assert rep.images == rep.searchable == rep.hashed == 13 and rep.generation >= 1
    assert not rep.changed and not rep.missing and not rep.warnings
    assert _listing(idx) == before


def test_missing_segment_is_an_error(small_index):
    _, idx = small_index
    (idx / "features-00000001.npy").unlink()
    rep = check_index(idx)
    assert not rep.ok and any("features-00000001.npy is missing" in e for e in rep.errors)


def test_truncated_segment_is_an_error(small_index):
    _, idx = small_index
    seg = idx / "features-00000001.npy"
    seg.write_bytes(seg.read_bytes()[: seg.stat().st_size // 2])
    rep = check_index(idx)
    assert not rep.ok and any("features-00000001.npy" in e for e in rep.errors)


def test_a_row_deleted_behind_the_stores_back_leaves_an_id_without_metadata(small_index):
    _, idx = small_index
    with sqlite3.connect(idx / "meta.sqlite") as c:
        c.execute("DELETE FROM images WHERE id = 5")
    rep = check_index(idx)
    assert not rep.ok
    assert any("with no metadata row: [5]" in e for e in rep.errors), rep.errors


def test_search_index_lacking_an_id_is_an_error(small_index):
    _, idx = small_index
    index = faiss.read_index(str(_faiss_path(idx)))
    index.remove_ids(np.array([3], np.int64))
    faiss.write_index(index, str(_faiss_path(idx)))
    rep = check_index(idx)
    assert not rep.ok and any("lacks 1 image row(s): ids [3]" in e for e in rep.errors), rep.errors


def test_search_index_holding_another_images_vector_is_an_error(small_index):
    _, idx = small_index
    index = faiss.read_index(str(_faiss_path(idx)))
    a, b = index.reconstruct(2), index.reconstruct(7)
    index.remove_ids(np.array([2, 7], np.int64))
    index.add_with_ids(np.stack([b, a]), np.array([2, 7], np.int64))
    faiss.write_index(index, str(_faiss_path(idx)))
    rep = check_index(idx)
    assert not rep.ok and any("another image's vector: [2, 7]" in e for e in rep.errors), rep.errors


def test_generation_older_than_its_segments_is_an_error(small_index):
    _, idx = small_index
    with sqlite3.connect(idx / "meta.sqlite") as c:
        c.execute("UPDATE meta SET value = '0' WHERE key = 'generation'")
    rep = check_index(idx)
    assert not rep.ok and any("newer than the store" in e for e in rep.errors), rep.errors


def test_files_changed_or_removed_on_disk_are_reported_not_failed(small_index):
    photos, idx = small_index
    files = sorted(p for p in photos.rglob("*.*"))
    files[0].write_bytes(files[0].read_bytes() + b"\0")  # changed since indexed
    files[1].unlink()
    rep = check_index(idx)
    assert rep.ok, rep.errors
    assert rep.changed == [str(files[0])] and rep.missing == [str(files[1])]
    assert rep.hashed == 12


def test_a_search_index_behind_the_store_and_leftover_files_are_warnings(small_index):
    _, idx = small_index
    store = IndexStore.open(idx)
    try:
        store.lock()
        store.delete([4])  # committed, the search index file not brought up to date
    finally:
        store.close()
    (idx / "features-00000099.npy").write_bytes(b"left by a killed writer")
    rep = check_index(idx)
    assert rep.ok, rep.errors
    assert rep.images == rep.searchable == 12
    assert any("behind" in w for w in rep.warnings) and any(
        "features-00000099.npy" in w for w in rep.warnings
    )


def test_cli_check_exit_codes_and_json(small_index, tmp_path, capsys):
    _, idx = small_index
    assert main(["check", str(idx)]) == 0
    assert capsys.readouterr().out.startswith(f"ok: {idx}: generation")
    assert main(["check", str(idx), "--json", "--no-hashes"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["ok"] is True and d["images"] == 13 and d["hashed"] == 0 and d["errors"] == []
    (idx / "features-00000001.npy").unlink()
    assert main(["check", str(idx)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("BROKEN") and "error: segment features-00000001.npy is missing" in out
    assert main(["check", str(tmp_path / "nothing")]) == 1
    assert "no cbir index here" in capsys.readouterr().out


@pytest.mark.parametrize("key", ["config", "generation"])
def test_missing_meta_rows_are_errors_not_crashes(small_index, key):
    _, idx = small_index
    with sqlite3.connect(idx / "meta.sqlite") as c:
        c.execute("DELETE FROM meta WHERE key = ?", (key,))
    rep = check_index(idx)
    assert not rep.ok and any(f"meta '{key}'" in e for e in rep.errors), rep.errors

"""Collections change (issue 18 item 4): moved files keep their ids, --prune, --exclude,
``cbir prune`` and ``cbir check`` naming the folder to re-index, on real photos."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cbir.cli import main
from cbir.index.check import check_index
from cbir.index.collection import excluded
from cbir.index.store import IndexStore
from cbir.pipeline import index_folder
from cbir.search.searcher import Searcher


@pytest.fixture
def library(photos_dir: Path, tmp_path: Path) -> Path:
    """``tmp/lib/{trip,home}/``: 6 of the photos in two folders (a small collection)."""
    files = sorted(p for p in photos_dir.rglob("*.*") if p.is_file())[:6]
    lib = tmp_path / "lib"
    for i, f in enumerate(files):
        dst = lib / ("trip" if i < 3 else "home") / f.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dst)
    return lib


def rows(idx: Path) -> dict[str, int]:
    store = IndexStore.open(idx)
    try:
        return {r["path"]: r["id"] for r in store.rows()}
    finally:
        store.close()


def features(idx: Path, ids: list[int]) -> np.ndarray:
    store = IndexStore.open(idx)
    try:
        return store.features(ids)
    finally:
        store.close()


def result_paths(idx: Path, query: Path) -> list[str]:
    s = Searcher(idx)
    try:
        return [h.path for h in s.search_file(query, k=50)]
    finally:
        s.close()


def test_a_moved_folder_keeps_ids_and_features_and_its_old_paths_leave_results(library, tmp_path):
    idx = tmp_path / "idx"
    index_folder(library, idx, progress=False)
    before = rows(idx)
    trip = sorted((library / "trip").iterdir())
    old_ids = [before[str(p)] for p in trip]
    old_feats = features(idx, old_ids)

    archive = tmp_path / "archive"
    archive.mkdir()
    shutil.move(library / "trip", archive / "trip")  # the case: move, index the new place
    summary = index_folder(archive, idx, progress=False)

    after = rows(idx)
    assert summary.moved == 3 and summary.indexed == 0 and summary.total == 6
    assert [after[str(archive / "trip" / p.name)] for p in trip] == old_ids
    assert not any(p.startswith(str(library / "trip")) for p in after)
    np.testing.assert_array_equal(features(idx, old_ids), old_feats)
    paths = result_paths(idx, archive / "trip" / trip[0].name)
    assert paths[0] == str(archive / "trip" / trip[0].name)
    assert not any(str(library / "trip") in p for p in paths) and len(paths) == 6


def test_a_file_renamed_in_place_keeps_its_id(library, tmp_path):
    idx = tmp_path / "idx"
    index_folder(library, idx, progress=False)
    f = sorted((library / "home").iterdir())[0]
    id_ = rows(idx)[str(f)]
    new = f.with_name("renamed" + f.suffix)
    f.rename(new)
    summary = index_folder(library, idx, progress=False)
    assert (summary.moved, summary.removed, summary.indexed) == (1, 0, 0)
    assert rows(idx)[str(new)] == id_ and str(f) not in rows(idx)


def test_prune_reaches_every_indexed_root_default_only_this_one_no_prune_none(library, tmp_path):
    idx = tmp_path / "idx"
    trip, home = library / "trip", library / "home"
    index_folder(trip, idx, progress=False)
    index_folder(home, idx, progress=False)
    gone_trip = sorted(trip.iterdir())[0]
    gone_home = sorted(home.iterdir())[0]
    gone_trip.unlink()
    gone_home.unlink()

    s = index_folder(home, idx, progress=False, prune=False)  # --no-prune: keep all
    assert s.removed == 0 and {str(gone_trip), str(gone_home)} <= set(rows(idx))
    s = index_folder(home, idx, progress=False)  # default: under the folder indexed
    assert s.removed == 1 and str(gone_home) not in rows(idx) and str(gone_trip) in rows(idx)
    code = main(["index", str(home), "--index", str(idx), "--prune", "--json"])
    assert code == 0 and set(rows(idx)) == {str(p) for p in [*trip.iterdir(), *home.iterdir()]}


def test_prune_keeps_the_rows_of_a_folder_that_is_gone_whole(library, tmp_path, capsys):
    """A recorded folder that is not there at all may be an unmounted disk: --prune keeps
    its rows and says so; `cbir prune` is the explicit way to drop them."""
    idx = tmp_path / "idx"
    trip, home = library / "trip", library / "home"
    index_folder(trip, idx, progress=False)
    index_folder(home, idx, progress=False)
    unmounted = tmp_path / "unmounted"
    trip.rename(unmounted)
    assert main(["index", str(home), "--index", str(idx), "--prune"]) == 0
    out = capsys.readouterr().out
    assert f"kept the rows under {trip}: the folder is gone" in out and len(rows(idx)) == 6
    unmounted.rename(trip)  # mounted again: nothing was lost
    assert index_folder(trip, idx, progress=False).unchanged == 3


def test_exclude_keeps_files_out_and_prunes_their_rows(library, tmp_path, capsys):
    idx = tmp_path / "idx"
    code = main(["index", str(library), "--index", str(idx), "--exclude", "trip", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["excluded"] == 3 and out["total"] == 3
    assert all("/trip/" not in p for p in rows(idx))

    index_folder(library, idx, progress=False)
    assert len(rows(idx)) == 6
    first = sorted((library / "home").iterdir())[0].name
    s = index_folder(library, idx, progress=False, exclude=[first], prune=False)
    assert s.removed == 0 and len(rows(idx)) == 6  # --no-prune keeps excluded rows
    s = index_folder(library, idx, progress=False, exclude=[first])
    assert s.removed == 1 and not any(p.endswith("/" + first) for p in rows(idx))


def test_excluding_every_image_is_a_clear_error(library, tmp_path, capsys):
    assert main(["index", str(library), str(tmp_path / "idx"), "--exclude", "*.*"]) == 1
    assert "all 6 images match --exclude *.*; nothing to index" in capsys.readouterr().err


def test_exclude_globs():
    root = "/p"
    assert excluded("/p/raw/a.jpg", root, ["raw/*"]) and excluded("/p/a/b.png", root, ["*.png"])
    assert excluded("/p/x/.thumbnails/a.jpg", root, [".thumbnails"])
    assert excluded("/p/x/a_thumb.jpg", root, ["*_thumb.jpg"])
    assert not excluded("/p/rawer/a.jpg", root, ["raw"]) and not excluded("/p/a.jpg", root, [])


def test_cbir_prune_dry_run_then_drops_files_gone_anywhere(library, tmp_path, capsys):
    idx = tmp_path / "idx"
    index_folder(library / "trip", idx, progress=False)
    index_folder(library / "home", idx, progress=False)
    gone = [sorted((library / d).iterdir())[0] for d in ("trip", "home")]
    for g in gone:
        g.unlink()

    assert main(["prune", str(idx), "--dry-run", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["dry_run"] and sorted(m["path"] for m in d["missing"]) == sorted(map(str, gone))
    assert d["removed"] == 0 and len(rows(idx)) == 6
    assert main(["prune", str(idx)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dropped 2 row(s)") and all(str(g) in out for g in gone)
    assert set(rows(idx)) == {str(p) for p in library.rglob("*.*")}
    q = sorted((library / "home").iterdir())[0]
    assert len(result_paths(idx, q)) == 4


def test_check_names_the_folder_to_reindex(library, tmp_path, capsys):
    idx = tmp_path / "idx"
    index_folder(library / "trip", idx, progress=False)
    index_folder(library / "home", idx, progress=False)
    changed = sorted((library / "home").iterdir())[0]
    changed.write_bytes(changed.read_bytes() + b"\0")
    shutil.rmtree(library / "trip")

    rep = check_index(idx)
    home, trip = str(library / "home"), str(library / "trip")
    assert rep.ok and rep.reindex == {
        home: {"changed": 1, "missing": 0, "exists": True},
        trip: {"changed": 0, "missing": 3, "exists": False},
    }
    assert main(["check", str(idx)]) == 0
    out = capsys.readouterr().out
    assert f"1 file(s) changed under {home}: re-index it: `cbir index {home} --index {idx}`" in out
    assert f"3 file(s) missing under {trip}: the folder is gone" in out
    assert f"`cbir prune {idx}`" in out and "re-run `cbir index`" not in out

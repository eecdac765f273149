"""Issue 16 item 5: an index whose feature segment is deleted, truncated or replaced.

Before the fix, ``cbir index`` on the same folder said "13 unchanged" with exit 0 while
``cbir check`` said BROKEN, and a server answered 404 for ids whose images it still served.
Now a re-index re-embeds the lost rows (same ids) and ``cbir repair`` rebuilds what can be
rebuilt and names what cannot.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from cbir.cli import main
from cbir.index.check import check_index
from cbir.index.damage import damaged_rows
from cbir.index.store import IndexStore
from cbir.pipeline import index_folder
from cbir.repair import repair_index

SIZE = 64


def _index(photos: Path, idx: Path) -> None:
    """Index at size 64 in commits of 4 images: segments of 4, 4, 4 and 1 rows."""
    index_folder(photos, idx, size=SIZE, workers=1, progress=False, batch_size=4, commit_every=4)


def _state(idx: Path) -> dict[str, tuple[int, np.ndarray, str]]:
    """path -> (id, features, tags)."""
    store = IndexStore.open(idx)
    try:
        rows = store.rows()
        feats = store.features([r["id"] for r in rows])
        return {r["path"]: (r["id"], f, r["tags"]) for r, f in zip(rows, feats, strict=True)}
    finally:
        store.close()


def _segment_rows(idx: Path, gen: int) -> dict[str, int]:
    """path -> id of the rows stored in segment ``gen``."""
    store = IndexStore.open(idx)
    try:
        q = "SELECT path, id FROM images WHERE seg=?"
        return {p: i for p, i in store.conn.execute(q, (gen,))}
    finally:
        store.close()


@pytest.fixture
def indexed(tmp_path: Path, photos_copy: Path) -> tuple[Path, Path, dict]:
    """(photos, index, state before damage) with four segments; segment 2 holds 4 rows."""
    idx = tmp_path / "index"
    _index(photos_copy, idx)
    assert len(_segment_rows(idx, 2)) == 4
    return photos_copy, idx, _state(idx)


def _delete(idx: Path) -> None:
    (idx / "features-00000002.npy").unlink()


def _truncate(idx: Path) -> None:
    seg = idx / "features-00000002.npy"
    seg.write_bytes(seg.read_bytes()[: seg.stat().st_size // 2])


def _wrong_shape(idx: Path) -> None:
    shutil.copyfile(idx / "features-00000004.npy", idx / "features-00000002.npy")


def _non_finite(idx: Path) -> None:
    seg = idx / "features-00000002.npy"
    a = np.load(seg)
    a[1, 7] = np.nan
    np.save(seg, a)


def _same_features(before: dict, after: dict) -> None:
    assert set(before) == set(after)
    for path, (id_, feats, tags) in before.items():
        assert after[path][0] == id_, path  # the same id
        assert after[path][2] == tags, path
        np.testing.assert_allclose(after[path][1], feats, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("damage", [_delete, _truncate, _wrong_shape])
def test_reindex_repairs_lost_features_keeping_ids(indexed, damage, capsys):
    photos, idx, before = indexed
    damage(idx)
    assert not check_index(idx, hashes=False).ok  # the damage is real
    assert main(["index", str(photos), "--index", str(idx)]) == 0
    out = capsys.readouterr().out
    # Before the fix: "indexed 0 new or changed image(s), 13 unchanged, 0 removed".
    assert "9 unchanged, 4 repaired, 0 removed" in out, out
    rep = check_index(idx)
    assert rep.ok, rep.errors
    _same_features(before, _state(idx))


def test_reindex_json_counts_the_repair(indexed, capsys):
    photos, idx, _ = indexed
    _truncate(idx)
    assert main(["index", str(photos), "--index", str(idx), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["repaired"], summary["unchanged"], summary["indexed"]) == (4, 9, 0)
    assert summary["lost"] == []


def test_reindex_removes_and_names_a_row_whose_file_is_gone_too(indexed, capsys):
    photos, idx, before = indexed
    victims = _segment_rows(idx, 2)
    gone = sorted(victims)[0]
    Path(gone).unlink()
    _delete(idx)
    assert main(["index", str(photos), "--index", str(idx)]) == 0
    out = capsys.readouterr().out
    assert "3 repaired, 0 removed, 1 lost" in out, out
    assert f"lost: {gone} (id {victims[gone]})" in out and "the file is gone" in out
    assert check_index(idx).ok
    del before[gone]
    _same_features(before, _state(idx))


def test_reindex_refuses_when_lost_rows_lie_outside_the_folder(tmp_path, photos_copy, capsys):
    """Rows of another folder cannot be repaired by indexing this one: refused, nothing
    written, and the message names `cbir repair` (which does repair them)."""
    idx, other = tmp_path / "index", tmp_path / "other"
    shutil.move(photos_copy / "sub", other)
    _index(other, idx)  # 6 photos: segments 1 (4 rows) and 2 (2 rows)
    index_folder(photos_copy, idx, size=SIZE, workers=1, progress=False)
    (idx / "features-00000001.npy").unlink()
    listing = sorted(p.name for p in idx.iterdir())
    assert main(["index", str(photos_copy), "--index", str(idx)]) == 1
    err = capsys.readouterr().err
    assert "4 indexed image(s) outside" in err and str(other) in err, err
    assert f"`cbir repair {idx}`" in err and "nothing was indexed" in err
    assert sorted(p.name for p in idx.iterdir()) == listing
    assert main(["repair", str(idx)]) == 0
    assert check_index(idx).ok


@pytest.mark.parametrize("damage", [_delete, _truncate, _wrong_shape, _non_finite])
def test_repair_re_embeds_lost_features(indexed, damage, capsys):
    _, idx, before = indexed
    store = IndexStore.open(idx)
    store.set_tags(next(iter(_segment_rows(idx, 2).values())), "kept")
    store.close()
    before = _state(idx)
    damage(idx)
    assert main(["repair", str(idx), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    want = 1 if damage is _non_finite else 4
    assert report["damaged"] == len(report["repaired"]) == want and report["lost"] == []
    assert report["check"]["ok"] and report["search_index"]
    assert check_index(idx).ok
    _same_features(before, _state(idx))


def test_repair_names_what_it_cannot_repair_and_drops_it_when_told(indexed, capsys):
    _, idx, before = indexed
    victims = sorted(_segment_rows(idx, 2))
    gone, changed = victims[0], victims[1]
    Path(gone).unlink()
    with open(changed, "ab") as f:
        f.write(b"\0")  # the content that was indexed is no longer there
    _delete(idx)
    assert main(["repair", str(idx)]) == 1
    out = capsys.readouterr().out
    assert f"not repaired: {gone} " in out and "the file is gone" in out
    assert f"not repaired: {changed} " in out and "changed since it was indexed" in out
    assert "`cbir repair" in out and "--drop-lost" in out
    assert "BROKEN" in out  # the check after it names what is left
    left = damaged_rows(IndexStore.open(idx))
    assert {d.path for d in left.values()} == {gone, changed}

    assert main(["repair", str(idx), "--drop-lost"]) == 0
    out = capsys.readouterr().out
    assert "(removed)" in out and out.count("not repaired:") == 2
    assert check_index(idx).ok
    for p in (gone, changed):
        del before[p]
    _same_features(before, _state(idx))


def test_repair_rebuilds_a_damaged_search_index_file(indexed, capsys):
    _, idx, _ = indexed
    store = IndexStore.open(idx)
    fa = store.get_meta("faiss")
    store.close()
    (idx / fa["file"]).write_bytes(b"not a faiss index")
    assert main(["repair", str(idx)]) == 0
    assert "0 row(s) had lost their stored features" in capsys.readouterr().out
    rep = check_index(idx)
    assert rep.ok and not rep.warnings, (rep.errors, rep.warnings)


def test_repair_of_a_whole_index_keeps_it_whole(indexed):
    _, idx, before = indexed
    report = repair_index(idx)
    assert report.whole and report.damaged == 0 and report.search_index
    assert check_index(idx).ok
    _same_features(before, _state(idx))


def test_a_server_answers_the_repaired_ids_again(indexed):
    """The same running app: 404 for a lost row's id while its image is served; after
    `cbir repair` the search by that id answers, with the image itself first."""
    from cbir.service.app import create_app

    _, idx, _ = indexed
    ids = sorted(_segment_rows(idx, 2).values())
    _delete(idx)
    with TestClient(create_app(idx, allowed_hosts=["testserver"])) as client:
        assert client.get(f"/images/{ids[0]}").status_code == 200
        assert client.get("/search", params={"id": ids[0], "k": 3}).status_code == 404
        assert main(["repair", str(idx)]) == 0
        for id_ in ids:
            r = client.get("/search", params={"id": id_, "k": 3})
            assert r.status_code == 200, r.text
            assert r.json()["results"][0]["id"] == id_

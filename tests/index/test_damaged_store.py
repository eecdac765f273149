"""A damaged ``meta.sqlite`` (issue 16, item 4): one clear line, non-zero exit, and
``cbir check`` calls it broken.

The damage is made the way the attack made it: bytes flipped inside the pages of a real
index of real photos (not the header page), and a stored config without its backbone.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from cbir.cli import main
from cbir.index.check import check_index
from cbir.index.store import IndexStore
from cbir.pipeline import index_folder


@pytest.fixture(scope="module")
def clean_index(tmp_path_factory: pytest.TempPathFactory, photos_dir: Path) -> Path:
    idx = tmp_path_factory.mktemp("damaged") / "clean"
    index_folder(photos_dir, idx, size=64, workers=1, progress=False)
    with sqlite3.connect(idx / "meta.sqlite") as c:  # everything in the main file
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return idx


def _flip(clean: Path, dst: Path, needle: bytes, at: int, xor: int) -> Path:
    """A copy of ``clean`` with byte ``at`` of every copy of ``needle`` in the database's
    pages (after the header page) XORed with ``xor``."""
    shutil.copytree(clean, dst)
    db = dst / "meta.sqlite"
    data = bytearray(db.read_bytes())
    hits, start = 0, 4096
    while (i := data.find(needle, start)) >= 0:
        data[i + at] ^= xor
        hits, start = hits + 1, i + 1
    assert hits, needle
    db.write_bytes(bytes(data))
    return dst


def _no_backbone(clean: Path, dst: Path) -> Path:
    shutil.copytree(clean, dst)
    with sqlite3.connect(dst / "meta.sqlite") as c:
        c.execute("UPDATE meta SET value = json_remove(value, '$.backbone') WHERE key='config'")
    return dst


DAMAGE = {
    # a quote of the stored config turned into '#': the JSON no longer parses
    "config-json": lambda clean, dst, _p: _flip(clean, dst, b'"feature_dim"', 0, 0x01),
    # a byte of the search-index meta no longer UTF-8
    "meta-utf8": lambda clean, dst, _p: _flip(
        clean, dst, b'"index_type": "Flat", "previous"', 16, 0x80
    ),
    # a byte of every stored image path no longer UTF-8
    "path-utf8": lambda clean, dst, photos: _flip(clean, dst, str(photos).encode(), 2, 0x80),
    "no-backbone": lambda clean, dst, _p: _no_backbone(clean, dst),
}


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    _out, err = capsys.readouterr()
    return code, err


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_database_is_one_line_and_check_sees_it(
    capsys: pytest.CaptureFixture[str],
    clean_index: Path,
    photos_dir: Path,
    tmp_path: Path,
    damage: str,
) -> None:
    idx = DAMAGE[damage](clean_index, tmp_path / damage, photos_dir)
    query = next(iter(sorted(photos_dir.rglob("*.jpg"))))
    runs = [
        ("search", str(idx), str(query)),
        ("index", str(photos_dir), "--index", str(idx)),
        ("info", str(idx)),
    ]
    for argv in runs:
        code, err = _cli(capsys, *argv)
        if damage == "path-utf8" and argv[0] == "info":
            continue  # info reads no path: nothing damaged for it to report
        assert code != 0, (argv, err)
        assert "Traceback" not in err and err.count("\n") == 1, (argv, err)
        assert str(idx / "meta.sqlite") in err, (argv, err)
        assert "cbir check" in err and "backup" in err, (argv, err)
    report = check_index(idx)
    assert not report.ok, report.lines()
    assert any("meta.sqlite" in e for e in report.errors), report.errors
    code, err = _cli(capsys, "check", str(idx))
    assert code != 0


def test_clean_copy_still_works(capsys: pytest.CaptureFixture[str], clean_index: Path) -> None:
    """The checks above are of damage, not of copying: a clean copy is ok."""
    report = check_index(clean_index)
    assert report.ok, report.lines()
    store = IndexStore.open(clean_index)
    try:
        assert isinstance(store.config["backbone"], dict)
        assert json.loads(json.dumps(store.config)) == store.config
    finally:
        store.close()

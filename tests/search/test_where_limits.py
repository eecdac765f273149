"""``--where`` under attack (issue 16, item 3): huge integers, deep nesting.

Each attack once crashed (OverflowError, sqlite "parser stack overflow", RecursionError);
now each is a one-line CbirError in the library, exit 1 in the CLI and HTTP 400 in the
service.
"""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

import pytest

from cbir.cli import main
from cbir.errors import CbirError
from cbir.index.store import IndexStore
from cbir.search.where import MAX_DEPTH, filter_sql, matching_ids, parse_where

ATTACKS = [
    ("id = 9223372036854775808", "64-bit"),  # 2**63: one past SQLite's INTEGER
    ("id > -9223372036854775809", "64-bit"),
    ("size < 1" + "0" * 400, "64-bit"),
    ("not " * 20 + "id = 1", "nested"),
    ("(" * 330 + "id = 1" + ")" * 330, "nested"),
    ("(" * 1990 + "id = 1", "nested"),
    ("not " * 400 + "id = 1", "nested"),
]


@pytest.fixture(scope="module")
def small_index(tmp_path_factory: pytest.TempPathFactory, photos_dir: Path) -> Path:
    idx = tmp_path_factory.mktemp("where") / "index"
    assert main(["index", str(photos_dir), "--index", str(idx), "--size", "64", "--json"]) == 0
    return idx


@pytest.mark.parametrize("text,msg", ATTACKS, ids=[f"attack{i}" for i in range(len(ATTACKS))])
def test_where_attack_is_one_line_error(small_index: Path, text: str, msg: str) -> None:
    with pytest.raises(CbirError, match=msg) as e:
        parse_where(text, ["year"])
    assert "\n" not in str(e.value) and len(str(e.value)) < 600


def test_where_bounds_keep_what_sqlite_can_hold(small_index: Path) -> None:
    """The largest integers pass and match; the deepest filter allowed compiles in SQLite."""
    store = IndexStore.open(small_index)
    try:
        n = store.count()
        assert len(matching_ids(store.conn, parse_where("id < 9223372036854775807"))) == n
        assert len(matching_ids(store.conn, parse_where("id > -9223372036854775808"))) == n
        assert len(matching_ids(store.conn, parse_where("size < 1e400"))) == n  # a float: inf
        # Every mix of the constructs that nest deepest in SQL, at the depth allowed.
        units = {
            "not": ("not ", ""),
            "or-and": ("(id = 1 or id = 2 and ", ")"),
            "or": ("(id = 1 or ", ")"),
            "tags-or": ("(tags != a or name like 'x%' and ", ")"),
        }
        for a, b in itertools.product(units, repeat=2):
            seq = [units[a if i % 2 else b] for i in range(MAX_DEPTH)]
            text = "".join(u[0] for u in seq) + "tags = x" + "".join(u[1] for u in reversed(seq))
            w = parse_where(text, [])
            sql, params = filter_sql(w)
            store.conn.execute(sql, params).fetchall()
            with pytest.raises(CbirError, match="nested"):
                parse_where("not " + text, [])
    finally:
        store.close()


def test_where_attacks_cli_one_line(capsys, small_index: Path, photos_dir: Path) -> None:
    query = next(p for p in sorted(photos_dir.rglob("*.jpg")))
    for text, _msg in ATTACKS[:5]:
        code = main(["search", str(small_index), str(query), "--where", text])
        out, err = capsys.readouterr()
        assert code == 1, text
        assert err.startswith("cbir: error: --where") and err.count("\n") == 1, err[:300]
        assert "Traceback" not in err


def test_where_attacks_http_400(small_index: Path) -> None:
    from fastapi.testclient import TestClient

    from cbir.service.app import create_app

    with TestClient(create_app(small_index, allowed_hosts=["testserver"])) as c:
        for text, _msg in ATTACKS[:5]:
            r = c.get("/search", params={"id": 1, "k": 3, "where": text})
            assert r.status_code == 400, (text, r.status_code, r.text[:200])
            assert "--where" in r.json()["error"]
        assert c.get("/search", params={"id": 1, "k": 3, "where": "id < 5"}).status_code == 200


def test_sqlite_failure_is_a_cbir_error(small_index: Path) -> None:
    """Whatever SQLite refuses in a filter (here: a limit lowered below what we allow) is
    a one-line CbirError, not a sqlite3 traceback."""
    store = IndexStore.open(small_index)
    try:
        store.conn.setlimit(sqlite3.SQLITE_LIMIT_EXPR_DEPTH, 3)
        with pytest.raises(CbirError, match="--where") as e:
            matching_ids(store.conn, parse_where("not not not id = 1 or id = 2 and id = 3"))
        assert "\n" not in str(e.value)
    finally:
        store.close()

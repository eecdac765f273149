"""The CLI as a user runs it: JSON shapes, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cbir.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, photos_dir):
    idx = tmp_path_factory.mktemp("cli") / "index"
    assert main(["index", str(photos_dir), "--index", str(idx), "--json"]) == 0
    return idx


def test_index_json_summary(capsys, photos_dir, tmp_path):
    code, out, _ = run(capsys, "index", str(photos_dir), "--index", str(tmp_path / "i"), "--json")
    d = json.loads(out)
    assert code == 0 and d["indexed"] == d["total"] == d["found"] and d["n_failed"] == 0


def test_search_json_file_folder_and_id(capsys, index_dir, photos_dir, tmp_path):
    q = sorted(photos_dir.glob("*.png"))[0]
    code, out, _ = run(capsys, "search", str(index_dir), str(q), "-k", "3", "--json")
    d = json.loads(out)
    assert code == 0 and d["query"] == str(q)
    assert [r["rank"] for r in d["results"]] == [1, 2, 3]
    assert set(d["results"][0]) == {"rank", "path", "score", "id"} and d["results"][0][
        "path"
    ] == str(q)
    code, out, _ = run(capsys, "search", str(index_dir), f"id:{d['results'][1]['id']}", "--json")
    assert json.loads(out)["results"][0]["id"] == d["results"][1]["id"]
    html = tmp_path / "r.html"
    code, out, _ = run(
        capsys,
        "search",
        str(index_dir),
        str(photos_dir / "sub"),
        "-k",
        "2",
        "--json",
        "--html",
        str(html),
    )
    many = json.loads(out)
    assert isinstance(many, list) and len(many) == len(list((photos_dir / "sub").iterdir()))
    page = html.read_text()
    assert page.count("<figure") == 3 * len(many) and "data:image/jpeg;base64," in page


def test_info_and_datasets(capsys, index_dir):
    code, out, _ = run(capsys, "info", str(index_dir), "--json")
    d = json.loads(out)
    assert (
        code == 0 and d["dimension"] == 1280 and d["backbone"]["backbone"] == "efficientnet-lite0"
    )
    assert d["index_type"] == "Flat" and d["size_on_disk"] > 0 and d["count"] > 0
    code, out, _ = run(capsys, "info", str(index_dir))
    assert "count:" in out and "size on disk:" in out
    code, out, _ = run(capsys, "datasets", "--json")
    names = [r["name"] for r in json.loads(out)]
    assert {"imagefolder", "fashion-mnist"} <= set(names)


def test_errors_are_one_line_and_nonzero(capsys, index_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    txt = tmp_path / "q.jpg"
    txt.write_text("not an image")
    cases = [
        (["index", str(tmp_path / "empty"), "--index", str(tmp_path / "x")], "no images found"),
        (["search", str(tmp_path / "nowhere"), "id:1"], "no cbir index"),
        (["search", str(index_dir), str(txt)], "not-an-image"),
        (["search", str(index_dir), "id:999999"], "not in"),
        (["search", str(index_dir), "id:abc"], "expected id:N"),
    ]
    for argv, msg in cases:
        code, out, err = run(capsys, *argv)
        assert code == 1, argv
        assert msg in err and "Traceback" not in err and err.count("\n") == 1, (argv, err)


def test_console_script_entry_point(index_dir):
    r = subprocess.run(
        [sys.executable, "-m", "cbir.cli", "info", str(index_dir)], capture_output=True, text=True
    )
    assert r.returncode == 0 and "efficientnet-lite0" in r.stdout

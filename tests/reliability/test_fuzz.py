"""Malformed inputs through `cbir index`, `cbir search` and the upload endpoint: no crash, no
hang, a clear error for each; plus regression tests for what the fuzzing found."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest

from cbir.data.folder import find_images
from cbir.data.images import decode, read_bytes
from cbir.errors import ImageError
from cbir.pipeline import index_folder
from cbir_testing.reliability.fuzz_inputs import CONTENT_KINDS, FS_KINDS, bases, generate
from cbir_testing.reliability.suite import Counts, fuzz_tallies


def test_generated_inputs_cover_every_kind():
    xs = generate(300, seed=5)
    assert len(xs) == 300
    assert {x.kind for x in xs} == set(CONTENT_KINDS + FS_KINDS)
    assert any(b"\xff" in x.name or b"\xe9" in x.name for x in xs)  # names that are not UTF-8


def test_malformed_inputs_fast(lab, tmp_path):
    tallies = fuzz_tallies(lab.reference, tmp_path, Counts.quick(), seed=1, log=lambda _: None)
    assert [t.trials for t in tallies][:2] == [100, 100] and tallies[2].trials > 50
    for t in tallies:
        assert t.failures == 0, (t.fault, t.details)


@pytest.mark.slow
def test_malformed_inputs_release(lab, tmp_path):
    tallies = fuzz_tallies(lab.reference, tmp_path, Counts(), seed=2, log=lambda _: None)
    assert [t.trials for t in tallies][:2] == [1000, 1000]
    for t in tallies:
        assert t.failures == 0, (t.fault, t.details)


# ---------------------------------------------------------------- regressions
def test_reading_a_fifo_named_like_an_image_is_refused_not_a_hang(tmp_path):
    """Regression: read_bytes opened a FIFO and waited for a writer forever."""
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    box: list[BaseException] = []

    def read() -> None:
        try:
            read_bytes(fifo)
        except ImageError as e:
            box.append(e)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(30)  # a hang bound, not a timing measurement
    assert box and box[0].reason == "unreadable" and "regular file" in box[0].detail


def test_links_that_lead_nowhere_and_fifos_named_like_images_are_reported(tmp_path, photos_dir):
    """Regression: symlink loops, dangling links and FIFOs named .jpg were skipped silently."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "ok.png").write_bytes(bases()["PNG"][0])
    os.symlink(folder / "b.jpg", folder / "a.jpg")
    os.symlink(folder / "a.jpg", folder / "b.jpg")
    os.symlink("/nonexistent/x.jpg", folder / "dangling.jpg")
    os.mkfifo(folder / "pipe.png")
    os.symlink(photos_dir, folder / "linked-folder.jpg")  # a folder link: not an image, not walked
    assert [p.name for p in find_images(folder)] == [
        "a.jpg",
        "b.jpg",
        "dangling.jpg",
        "ok.png",
        "pipe.png",
    ]
    s = index_folder(folder, tmp_path / "idx", size=64, workers=1, progress=False)
    assert s.total == 1
    failed = {Path(f["path"]).name: f for f in s.failed}
    assert set(failed) == {"a.jpg", "b.jpg", "dangling.jpg", "pipe.png"}
    assert all(f["reason"] == "unreadable" for f in failed.values())
    assert (
        "symbolic links" in failed["a.jpg"]["detail"]
        and "regular file" in failed["pipe.png"]["detail"]
    )


def test_a_file_name_that_is_not_utf8_fails_alone(tmp_path):
    """Regression: one such name made SQLite raise UnicodeEncodeError and no file was indexed."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "ok.png").write_bytes(bases()["PNG"][0])
    with open(os.fsencode(folder) + b"/caf\xe9.jpg", "wb") as f:
        f.write(bases()["JPEG"][1])
    s = index_folder(folder, tmp_path / "idx", size=64, workers=1, progress=False)
    assert s.indexed == s.total == 1
    assert s.failed == [
        {
            "path": str(folder / "caf\\xe9.jpg"),
            "reason": "bad-name",
            "detail": "the file name is not UTF-8; rename it",
        }
    ]
    assert "bad-name" in "\n".join(s.lines())


def test_cli_prints_names_that_are_not_utf8_and_errors_on_one_line(lab, tmp_path):
    """Regression: `cbir search` crashed printing a query name that is not UTF-8 (strict UTF-8
    stdout), and a path with a newline split the one-line error."""
    q = os.fsencode(tmp_path) + b"/q\xff.jpg"
    with open(q, "wb") as f:
        f.write(bases()["JPEG"][0])
    nl = tmp_path / "a\nb.jpg"
    nl.write_bytes(b"not an image")
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}
    cmd = [sys.executable, "-m", "cbir.cli", "search", str(lab.reference)]
    r = subprocess.run([*cmd, os.fsdecode(q), "-k", "1"], capture_output=True, env=env)
    assert r.returncode == 0 and b"query: " in r.stdout and b"\\udcff" in r.stdout, r.stderr
    r = subprocess.run([*cmd, str(nl)], capture_output=True, env=env, text=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert r.stderr.startswith("cbir: error: ") and "a\\nb.jpg: not-an-image" in r.stderr


def test_damaged_tiff_metadata_warns_nothing_and_fails_cleanly():
    """Regression: Pillow printed UserWarnings (a second, confusing stderr line) for damaged
    TIFF metadata before cbir's own one-line error."""
    data = bases()["TIFF"][0][:39]
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        with pytest.raises(ImageError) as e:
            decode(data, "t.tif")
    assert not w and e.value.reason in ("corrupt", "truncated")


def test_json_output_of_index_names_failures(tmp_path, capsys):
    from cbir.cli import main

    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "ok.png").write_bytes(bases()["PNG"][0])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.png").write_text("hello")
    assert (
        main(["index", str(folder), "--index", str(tmp_path / "i"), "--size", "64", "--json"]) == 0
    )
    d = json.loads(capsys.readouterr().out)
    assert {(Path(f["path"]).name, f["reason"]) for f in d["failed"]} == {
        ("empty.jpg", "empty"),
        ("text.png", "not-an-image"),
    }

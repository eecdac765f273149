"""`cbir search --html` pages are plain files: readable as the umask allows, not 0600."""

from __future__ import annotations

import os
import stat

import pytest

from cbir.search.html import write_html
from cbir.search.searcher import Hit


def _results(photos_dir):
    photos = sorted(photos_dir.glob("*.jpg"))[:3]
    hits = [Hit(rank=i + 1, id=i, path=str(p), score=1.0 - i / 10) for i, p in enumerate(photos)]
    return [(str(photos[0]), hits)]


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_html_page_gets_the_permissions_of_a_plain_new_file(tmp_path, photos_dir, mask, mode):
    page = tmp_path / "results.html"
    old = os.umask(mask)
    try:
        write_html(page, _results(photos_dir))
    finally:
        os.umask(old)
    assert stat.S_IMODE(page.stat().st_mode) == mode
    assert page.read_text().count("data:image/jpeg;base64,") == 4  # query + 3 hits


def test_rewriting_a_page_keeps_the_permissions_it_has(tmp_path, photos_dir):
    page = tmp_path / "results.html"
    page.write_text("old")
    page.chmod(0o604)
    old = os.umask(0o022)
    try:
        write_html(page, _results(photos_dir))
    finally:
        os.umask(old)
    assert stat.S_IMODE(page.stat().st_mode) == 0o604 and "<html>" in page.read_text()

"""Fixtures for the reliability tests: one crash lab (corpus, clean reference run) per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from cbir.reliability.crash import CrashLab


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> CrashLab:
    """36 real images, a clean reference index (size 64) and the starting indexes."""
    return CrashLab(tmp_path_factory.mktemp("crash"))


@pytest.fixture
def small_index(tmp_path: Path, photos_copy: Path) -> tuple[Path, Path]:
    """(photos folder, index) of a private copy of the 13 real photos, at size 64."""
    from cbir.pipeline import index_folder

    idx = tmp_path / "index"
    index_folder(photos_copy, idx, size=64, workers=1, progress=False)
    return photos_copy, idx

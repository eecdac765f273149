"""Fixtures for the reliability tests: one crash lab (corpus, clean reference run) per session."""

from __future__ import annotations

import pytest

from cbir_testing.reliability.crash import CrashLab


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> CrashLab:
    """36 real images, a clean reference index (size 64) and the starting indexes."""
    return CrashLab(tmp_path_factory.mktemp("crash"))

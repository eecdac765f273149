"""Fixtures shared by the training tests."""

from __future__ import annotations

import os

import pytest

from cbir.train.trainer import load_data, make_config
from tests.conftest import FASHION_SMALL


@pytest.fixture(scope="module")
def one_thread():
    """Small batches train far faster on one thread than on two a busy machine shares."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """The cached features of the FASHION_SMALL subset (tests/conftest.py)."""
    os.environ.setdefault("CBIR_CACHE", str(tmp_path_factory.mktemp("cache")))
    return load_data(make_config(**FASHION_SMALL), progress=False)

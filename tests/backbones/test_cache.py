"""The dataset feature cache: computed once, memory-mapped after, keyed by items."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cbir.backbones.cache import cache_path, dataset_features
from cbir.backbones.efficientnet_lite import get_backbone
from cbir.data.base import ImageSet, array_loader
from tests.conftest import photo_arrays


@pytest.fixture
def small_set() -> ImageSet:
    arrays = list(photo_arrays().values())[:5]
    imgs = [a if a.ndim == 3 else np.stack([a] * 3, -1) for a in arrays]
    return ImageSet(
        name="photos/test",
        labels=np.arange(len(imgs)),
        loader=array_loader(imgs),
        keys=[f"photo-{i}" for i in range(len(imgs))],
    )


def test_cached_features_match_direct_embedding(small_set, tmp_path, monkeypatch):
    monkeypatch.setenv("CBIR_CACHE", str(tmp_path))
    feats = dataset_features(small_set, size=96, progress=False)
    assert feats.shape == (5, 1280)
    backbone = get_backbone(96, "crop")
    direct = backbone.run(np.stack([backbone.preprocess(small_set.load(i)) for i in range(5)]))
    direct = direct[0] if isinstance(direct, tuple) else direct
    np.testing.assert_allclose(feats, direct, atol=1e-4)
    path = cache_path(small_set, backbone.fingerprint)
    assert path.exists() and Path(path).parent.is_relative_to(tmp_path)
    again = dataset_features(small_set, size=96, progress=False)
    assert isinstance(again, np.memmap)
    np.testing.assert_array_equal(again, feats)
    # a different subset or input size is a different cache entry
    sub = small_set.subset([0, 2])
    assert cache_path(sub, backbone.fingerprint) != path
    np.testing.assert_allclose(
        dataset_features(sub, size=96, progress=False), feats[[0, 2]], atol=1e-5
    )
    assert not list(Path(path).parent.glob(".*.tmp"))


def test_subset_of_a_cached_split_is_sliced_not_embedded(small_set, tmp_path, monkeypatch):
    monkeypatch.setenv("CBIR_CACHE", str(tmp_path))
    feats = np.asarray(dataset_features(small_set, size=96, progress=False))

    def refuse(i: int):
        raise AssertionError(f"image {i} decoded again")

    small_set.loader = refuse  # subsets load through the parent's loader
    sub = small_set.subset([4, 1, 3], "photos/sub").subset([2, 0], "photos/subsub")
    assert sub.root()[0] is small_set and list(sub.root()[1]) == [3, 4]
    np.testing.assert_array_equal(dataset_features(sub, size=96, progress=False), feats[[3, 4]])

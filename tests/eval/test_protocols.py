"""Protocols: the splits and sizes of the papers, reproducible for a seed, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cbir.data.base import Dataset, ImageSet
from cbir.errors import CbirError
from cbir.eval.protocols import PROTOCOLS, get_protocol, resolve
from tests.conftest import needs_fashion
from tests.data.test_cub import cub_root  # noqa: F401  (fixture)


def _labels_only(name: str, labels: np.ndarray) -> ImageSet:
    def never(i: int) -> Image.Image:
        raise AssertionError("a protocol must not decode images")

    return ImageSet(name, labels, never, [f"{name}:{i}" for i in range(len(labels))])


def _keys(s: ImageSet) -> set[str]:
    return set(s.keys)


def test_cifar10_protocol_counts_per_class_disjoint_and_seeded():
    # the DeepHash-pytorch "cifar10" split on a labels-only CIFAR-shaped dataset: 10 classes,
    # 600 train + 100 test images each (the real one has 6,000 per class)
    rng = np.random.default_rng(0)
    train = rng.permutation(np.repeat(np.arange(10), 600))
    test = rng.permutation(np.repeat(np.arange(10), 100))
    ds = Dataset(
        "cifar10", {"train": _labels_only("c/train", train), "test": _labels_only("c/test", test)}
    )
    s = PROTOCOLS["cifar10"].build(ds, 0)
    assert np.bincount(s.query.labels).tolist() == [100] * 10
    assert np.bincount(s.train.labels).tolist() == [500] * 10
    assert len(s.database) == 7000 - 1000 - 5000
    q, t, d = _keys(s.query), _keys(s.train), _keys(s.database)
    assert not (q & t) and not (q & d) and not (t & d)
    assert len(q | t | d) == 7000  # every image in exactly one split
    again = PROTOCOLS["cifar10"].build(ds, 0)
    assert again.query.keys == s.query.keys and again.train.keys == s.train.keys
    other = PROTOCOLS["cifar10"].build(ds, 1)
    assert other.query.keys != s.query.keys
    assert s.sizes() == {"train": 5000, "query": 1000, "database": 1000}


def test_cifar10_protocol_refuses_too_few_images_per_class():
    ds = Dataset("cifar10", {
        "train": _labels_only("c/train", np.repeat(np.arange(3), 300)),
        "test": _labels_only("c/test", np.repeat(np.arange(3), 10)),
    })  # fmt: skip
    with pytest.raises(CbirError, match="fewer than"):
        PROTOCOLS["cifar10"].build(ds, 0)


@needs_fashion
def test_fashion_mnist_protocols_have_the_papers_sizes():
    proto, ds, s = resolve("fashion-mnist")
    assert proto.name == "fashion-mnist" and proto.map_at is None and proto.kind == "hashing"
    assert s.sizes() == {"train": 60000, "query": 10000, "database": 60000}
    assert s.database is s.train
    proto, ds, s = resolve("fashion-mnist", "fashion-mnist-zeroshot")
    assert proto.kind == "zeroshot" and s.database is None
    assert set(np.unique(s.train.labels)) == {0, 1, 2, 3, 4} and len(s.train) == 30000
    assert set(np.unique(s.query.labels)) == {5, 6, 7, 8, 9} and len(s.query) == 5000
    assert s.sizes()["database"] == 4999  # all-vs-all: each query ranks the others


def test_cub_protocols_on_the_real_layout(cub_root):  # noqa: F811
    proto, ds, s = resolve(str(cub_root), "cub-hashing")
    assert s.train is s.database and len(s.query) == 4 and len(s.database) == 4
    proto, ds, s = resolve(str(cub_root), "cub-zeroshot")
    assert s.database is None
    assert set(s.train.labels.tolist()) == {0, 1} and set(s.query.labels.tolist()) == {2, 3}


def test_image_folder_path_is_all_vs_all(tmp_path):
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / c / f"{i}.png")
    proto, ds, s = resolve(str(tmp_path))
    assert proto.name == "all-vs-all" and s.database is None and len(s.query) == 6
    assert sorted(s.query.labels.tolist()) == [0, 0, 0, 1, 1, 1]


def test_unknown_protocol_and_wrong_concepts_are_clear_errors():
    with pytest.raises(CbirError, match="unknown protocol 'cifar11'; known: .*cifar10"):
        get_protocol("cifar11")
    nus = Dataset("nuswide", {
        "query": _labels_only("n/q", np.zeros((4, 81), np.uint8)),
        "database": _labels_only("n/d", np.zeros((8, 81), np.uint8)),
    }, root="/data/nus")  # fmt: skip
    with pytest.raises(CbirError, match="21-concept lists; /data/nus has 81 concepts"):
        PROTOCOLS["nuswide-21"].build(nus, 0)
    assert PROTOCOLS["nuswide-21"].map_at == 5000

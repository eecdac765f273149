import gzip
import struct

import numpy as np
import pytest

from cbir.data.idx import load_idx, read_idx
from cbir.data.registry import open_dataset
from cbir.errors import CbirError
from tests.conftest import FASHION_ROOT, needs_fashion


def _write_idx(path, arr: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_idx_fixture_roundtrip(tmp_path):
    root = tmp_path / "fashion-mnist"
    root.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 4)):
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    ds = open_dataset(str(root))
    assert ds.name == "fashion-mnist" and len(ds["train"]) == 6 and len(ds["test"]) == 4
    assert list(ds["test"].labels) == [0, 1, 2, 3]
    assert ds["train"].load(1).size == (28, 28) and ds["train"].load(1).mode == "RGB"
    assert ds["train"].keys[1] == "fashion-mnist/train:1"


def test_truncated_and_missing_idx(tmp_path):
    (tmp_path / "x.gz").write_bytes(
        gzip.compress(struct.pack(">BBBBI", 0, 0, 8, 1, 10) + b"\x00" * 3)
    )
    with pytest.raises(CbirError, match="truncated"):
        read_idx(tmp_path / "x.gz")
    with pytest.raises(CbirError, match="missing train-images"):
        load_idx(tmp_path)


@needs_fashion
def test_real_fashion_mnist_sizes():
    ds = load_idx(FASHION_ROOT, "fashion-mnist")
    assert len(ds["train"]) == 60_000 and len(ds["test"]) == 10_000
    assert np.bincount(ds["test"].labels).tolist() == [1000] * 10

"""CIFAR-10 / CIFAR-100 reader on tiny pickles in the real on-disk layout."""

from __future__ import annotations

import os
import pickle
import struct

import numpy as np
import pytest

from cbir.data import cifar
from cbir.data.registry import open_dataset
from cbir.errors import CbirError


def _s(b):  # a Python 2 str
    return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<I", len(b)) + b)


def _int(i):
    return b"K" + bytes([i]) if 0 <= i < 256 else b"J" + struct.pack("<i", i)


def _py2(v):
    """Pickle opcodes for ``v`` as Python 2's cPickle (protocol 2) and numpy 1 wrote them."""
    if isinstance(v, str):
        return _s(v.encode("latin1"))
    if isinstance(v, int):
        return _int(v)
    if isinstance(v, list):
        return b"](" + b"".join(_py2(x) for x in v) + b"e"
    a = np.ascontiguousarray(v, dtype=np.uint8)
    shape = b"(" + b"".join(_int(n) for n in a.shape) + b"t"
    dtype = (b"cnumpy\ndtype\n" + _s(b"u1") + b"K\x00K\x01\x87R(K\x03" + _s(b"|")
             + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")  # fmt: skip
    return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + _s(b"b")
            + b"\x87R(K\x01" + shape + dtype + b"\x89" + _s(a.tobytes()) + b"tb")  # fmt: skip


def _dump(path, d, py3=False):
    """Write ``d`` as the distributed files are (Python 2 pickles), or as Python 3 re-saved it."""
    if py3:  # bytes keys and numpy 2's module path
        path.write_bytes(pickle.dumps({k.encode(): v for k, v in d.items()}, protocol=2))
    else:
        path.write_bytes(
            b"\x80\x02}(" + b"".join(_s(k.encode()) + _py2(v) for k, v in d.items()) + b"u."
        )


def _rows(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8)


@pytest.fixture
def cifar10_root(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    _dump(d / "batches.meta", {"label_names": names, "num_cases_per_batch": 2, "num_vis": 3072})
    for i in range(1, 6):
        _dump(
            d / f"data_batch_{i}",
            {"batch_label": f"training batch {i} of 5", "labels": [i, i + 1], "data": _rows(2, i),
             "filenames": [f"a{i}.png", f"b{i}.png"]},
            py3=i == 3,
        )  # fmt: skip
    test_rows = _rows(3, 9)
    test_rows[0, :1024] = 255  # image 0: pure red (R plane first)
    test_rows[0, 1024:] = 0
    _dump(d / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": [0, 9, 4],
                             "data": test_rows, "filenames": ["x", "y", "z"]})  # fmt: skip
    return tmp_path


def test_cifar10(cifar10_root):
    for ds in (cifar.load_cifar10(cifar10_root), open_dataset(str(cifar10_root))):
        assert ds.name == "cifar10"
        assert set(ds.splits) == {"train", "test"}
        train, test = ds["train"], ds["test"]
        assert len(train) == 10 and len(test) == 3
        assert train.labels.tolist() == [1, 2, 2, 3, 3, 4, 4, 5, 5, 6]
        assert test.labels.tolist() == [0, 9, 4] and not test.multilabel
        assert test.keys[1] == "cifar10/test:1" and len(set(train.keys)) == 10
        assert ds.class_names[9] == "truck"
        img = test.load(0)
        assert img.mode == "RGB" and img.size == (32, 32)
        assert img.getpixel((5, 7)) == (255, 0, 0)
        row = _rows(2, 1)[1]
        assert train.load(1).getpixel((3, 2)) == tuple(
            int(row[c * 1024 + 2 * 32 + 3]) for c in range(3)
        )
    # The batch folder itself is accepted as the root too.
    assert len(open_dataset(str(cifar10_root / "cifar-10-batches-py"))["test"]) == 3


def test_cifar10_missing_batch(cifar10_root):
    os.remove(cifar10_root / "cifar-10-batches-py" / "data_batch_4")
    with pytest.raises(CbirError, match="data_batch_4"):
        cifar.load_cifar10(cifar10_root)


def test_cifar_refuses_code_in_pickle(cifar10_root):
    (cifar10_root / "cifar-10-batches-py" / "test_batch").write_bytes(
        b"cos\nsystem\n(S'echo pwned'\ntR."
    )
    with pytest.raises(CbirError, match="test_batch.*refusing"):
        cifar.load_cifar10(cifar10_root)


def test_cifar100(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    fine = [f"fine{i}" for i in range(100)]
    _dump(
        d / "meta", {"fine_label_names": fine, "coarse_label_names": [f"c{i}" for i in range(20)]}
    )
    for split, n in (("train", 4), ("test", 2)):
        _dump(d / split, {"filenames": ["f"] * n, "batch_label": split, "fine_labels": list(range(n)),
                          "coarse_labels": [0] * n, "data": _rows(n, n)})  # fmt: skip
    ds = open_dataset(str(tmp_path))
    assert ds.name == "cifar100" and set(ds.splits) == {"train", "test"}
    assert ds["train"].labels.tolist() == [0, 1, 2, 3] and len(ds["test"]) == 2
    assert ds.class_names[3] == "fine3" and ds["test"].keys[1] == "cifar100/test:1"
    assert ds["test"].load(1).mode == "RGB"
    os.remove(d / "meta")
    with pytest.raises(CbirError, match="meta"):
        cifar.load_cifar100(tmp_path)

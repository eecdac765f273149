"""The decoding queue of :func:`cbir.backbones.embed.embed_stream`: rows written into reused
batch arrays, small first batches, failures and skipped items; the features are those of
one plain run over the same images, whatever the batch sizes."""

from __future__ import annotations

import numpy as np
import pytest

from cbir.backbones.embed import batch_sizes, embed_stream
from cbir.backbones.registry import open_backbone
from cbir.errors import ImageError
from tests.conftest import photo_arrays


def test_batch_sizes_ramp_up_to_the_batch_size():
    it = batch_sizes(64, 8)
    assert [next(it) for _ in range(6)] == [8, 16, 32, 64, 64, 64]
    it = batch_sizes(5, 8)
    assert [next(it) for _ in range(3)] == [5, 5, 5]
    it = batch_sizes(3, 1)
    assert [next(it) for _ in range(4)] == [1, 2, 3, 3]


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_features_equal_one_plain_run(batch_size):
    bb = open_backbone("efficientnet-lite0", size=32)
    imgs = [bb.preprocess(_pil(a)) for a in photo_arrays().values()]
    items = list(range(3 * len(imgs)))  # each photo three times, some skipped or failing

    def prepare(i: int):
        if i % 7 == 3:
            raise ImageError(f"f{i}", "corrupt", "test")
        if i % 5 == 1:
            return None, {"i": i}  # nothing to embed (e.g. content already indexed)
        return imgs[i % len(imgs)], {"i": i}

    want = [i for i in items if i % 7 != 3 and i % 5 != 1]
    ref, ref_logits = bb.run(np.stack([imgs[i % len(imgs)] for i in want]))
    got: dict[int, np.ndarray] = {}
    logits: dict[int, np.ndarray] = {}
    seen, failed = [], []
    for b in embed_stream(items, prepare, bb.run, batch_size=batch_size, workers=2):
        assert len(b.ok) + len(b.failed) <= batch_size
        for item, info, row in b.ok:
            seen.append(item)
            assert info == {"i": item}
            if row >= 0:
                got[item], logits[item] = b.features[row], b.logits[row]
            else:
                assert item % 5 == 1
        failed += [item for item, _ in b.failed]
    assert sorted(seen + failed) == items
    assert failed == [i for i in items if i % 7 == 3]
    np.testing.assert_array_equal(np.stack([got[i] for i in want]), ref)
    np.testing.assert_array_equal(np.stack([logits[i] for i in want]), ref_logits)


def test_arrays_of_another_shape_or_dtype():
    """Batches whose arrays change shape (a new batch array) or, inside a batch, dtype (that
    one is stacked as it is): each batch holds exactly its own arrays, in order."""
    shapes = [(4,), (4,), (2, 2), (2, 2), (4,), (4,), (4,), (4,)]

    def prepare(i: int):
        return np.full(shapes[i], i, np.float64 if i == 5 else np.float32), i

    def run(x: np.ndarray):
        return x.reshape(len(x), -1).sum(1, keepdims=True), np.zeros((len(x), 0), np.float32)

    out = {}
    for b in embed_stream(range(8), prepare, run, batch_size=2, first_batch=2):
        assert [item for item, _info, _row in b.ok] == [2 * (b.ok[0][0] // 2), b.ok[0][0] + 1]
        for item, _info, row in b.ok:
            out[item] = float(b.features[row, 0])
    assert out == {i: 4.0 * i for i in range(8)}


def _pil(a: np.ndarray):
    from PIL import Image

    return Image.fromarray(a).convert("RGB")

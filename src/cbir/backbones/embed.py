"""Decode in parallel with inference: a thread pool prepares the next batches while
onnxruntime runs the current one (Pillow, hashlib and onnxruntime all release the GIL).

The queue of prepared batches is bounded (``prefetch`` batches ahead), each worker writes
its image straight into its row of a preallocated batch array (reused once the batch has
run, so the inference thread does no stacking or copying), and the first batches are
small (``first_batch``, doubling up to ``batch_size``) so that inference starts after a
few images are decoded, not a whole batch. Batch sizes do not change the features: every
backbone computes each image's row independently of the others in its batch.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Any, Generic, TypeVar

import numpy as np

from cbir.errors import ImageError

T = TypeVar("T")

#: Images in the first batch of a stream; each next batch doubles, up to ``batch_size``.
FIRST_BATCH = 8


@dataclass
class Batch(Generic[T]):
    """One embedded batch.

    ``ok`` lists (item, info, row) for the items that prepared: ``row`` indexes
    ``features`` / ``logits``, or is -1 when ``prepare`` returned no array (nothing to
    embed, e.g. content already indexed); ``failed`` lists (item, ImageError).
    """

    ok: list[tuple[T, Any, int]]
    failed: list[tuple[T, ImageError]]
    features: np.ndarray
    logits: np.ndarray


class _Rows:
    """The input array of one batch, written row by row by the decoding threads.

    Allocated by the first array that arrives (its shape and dtype), or taken from the
    arrays of batches that have run (``spare``). An array of another shape or dtype is
    not written (the batch is then stacked from the arrays themselves).
    """

    def __init__(self, n: int, spare: _Spare) -> None:
        self.n = n
        self.spare = spare
        self.array: np.ndarray | None = None
        self.lock = threading.Lock()

    def put(self, k: int, arr: np.ndarray) -> bool:
        """Copy ``arr`` into row ``k``; False (nothing written) if it does not fit."""
        with self.lock:
            if self.array is None:
                self.array = self.spare.take(self.n, arr)
        a = self.array
        if a.shape[1:] != arr.shape or a.dtype != arr.dtype:
            return False
        a[k] = arr
        return True


class _Spare:
    """Input arrays of batches that have run, for the next batches to write into."""

    def __init__(self) -> None:
        self.arrays: list[np.ndarray] = []
        self.lock = threading.Lock()

    def take(self, n: int, like: np.ndarray) -> np.ndarray:
        """An ``(n, *like.shape)`` array of ``like``'s dtype (a spare one if it fits)."""
        with self.lock:
            for i, s in enumerate(self.arrays):
                if s.shape[1:] == like.shape and s.dtype == like.dtype and len(s) >= n:
                    return self.arrays.pop(i)[:n]
        return np.empty((n, *like.shape), like.dtype)

    def give(self, arr: np.ndarray) -> None:
        with self.lock:
            self.arrays.append(arr.base if isinstance(arr.base, np.ndarray) else arr)


def _prepare_into(
    prepare: Callable[[T], tuple[np.ndarray | None, Any]], item: T, rows: _Rows, k: int
) -> tuple[np.ndarray | bool | None, Any]:
    """``prepare(item)`` with its array written into row ``k`` (then True in its place)."""
    arr, info = prepare(item)
    if arr is not None and rows.put(k, np.asarray(arr)):
        return True, info
    return arr, info


def batch_sizes(batch_size: int, first: int = FIRST_BATCH) -> Iterator[int]:
    """``first``, doubling, up to ``batch_size``, then ``batch_size`` for ever."""
    n = max(1, min(first, batch_size))
    while True:
        yield n
        n = min(batch_size, n * 2)


def embed_stream(
    items: Iterable[T],
    prepare: Callable[[T], tuple[np.ndarray | None, Any]],
    run: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    batch_size: int = 64,
    workers: int = 2,
    prefetch: int = 2,
    first_batch: int = FIRST_BATCH,
) -> Iterator[Batch[T]]:
    """Embed ``items`` in batches, decoding ahead of inference.

    Args:
        items: anything ``prepare`` understands (file paths, dataset indices).
        prepare: ``prepare(item) -> (array or None, info)``, the array one image's input
            as ``run`` takes it stacked (e.g. HWC uint8); raises ImageError to report the
            item as failed. Runs in the decoding threads.
        run: the backbone's ``run(batch) -> (features, logits)``.
        batch_size: images per inference call (the first calls take fewer).
        workers: decoding threads.
        prefetch: batches prepared ahead of the one being embedded (the queue's bound).
        first_batch: images in the first batch (doubling up to ``batch_size``).
    """
    it = iter(items)
    sizes = batch_sizes(batch_size, first_batch)
    spare = _Spare()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: deque[tuple[list[T], _Rows, list[Future]]] = deque()

        def fill() -> None:
            while len(pending) <= prefetch:
                chunk = list(islice(it, next(sizes)))
                if not chunk:
                    return
                rows = _Rows(len(chunk), spare)
                futures = [
                    pool.submit(_prepare_into, prepare, item, rows, k)
                    for k, item in enumerate(chunk)
                ]
                pending.append((chunk, rows, futures))

        fill()
        while pending:
            chunk, rows, futures = pending.popleft()
            fill()
            ok: list[tuple[T, Any, int]] = []
            failed: list[tuple[T, ImageError]] = []
            written: list[int] = []  # rows of rows.array to embed, in order
            loose: dict[int, np.ndarray] = {}  # arrays that did not fit rows.array
            for k, (item, fut) in enumerate(zip(chunk, futures, strict=True)):
                try:
                    arr, info = fut.result()
                except ImageError as e:
                    failed.append((item, e))
                    continue
                if arr is None:
                    ok.append((item, info, -1))
                    continue
                r = len(written)  # its row of the features
                ok.append((item, info, r))
                if arr is True:
                    written.append(k)
                else:
                    loose[r] = arr
                    written.append(-1)
            if written:
                if not loose and written == list(range(len(chunk))):
                    x = rows.array  # every item written in order: the array as it is
                elif not loose:
                    x = rows.array[written]
                else:
                    x = np.stack(
                        [loose[r] if k < 0 else rows.array[k] for r, k in enumerate(written)]
                    )
                feats, logits = run(x)
            else:
                feats = np.zeros((0, 0), np.float32)
                logits = np.zeros((0, 0), np.float32)
            if rows.array is not None:
                spare.give(rows.array)
            yield Batch(ok, failed, feats, logits)

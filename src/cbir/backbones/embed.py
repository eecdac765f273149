"""Decode in parallel with inference: a thread pool prepares batch i+1 while
onnxruntime runs batch i (Pillow and onnxruntime both release the GIL)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Any, Generic, TypeVar

import numpy as np

from cbir.errors import ImageError

T = TypeVar("T")


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


def _prepare_batch(
    items: list[T], prepare: Callable[[T], tuple[np.ndarray | None, Any]], pool: ThreadPoolExecutor
) -> list[Future]:
    return [pool.submit(prepare, it) for it in items]


def embed_stream(
    items: Iterable[T],
    prepare: Callable[[T], tuple[np.ndarray | None, Any]],
    run: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    batch_size: int = 64,
    workers: int = 2,
    prefetch: int = 2,
) -> Iterator[Batch[T]]:
    """Embed ``items`` in batches, decoding ahead of inference.

    Args:
        items: anything ``prepare`` understands (file paths, dataset indices).
        prepare: ``prepare(item) -> (CHW float32 array or None, info)``; raises
            ImageError to report the item as failed.
        run: the backbone's ``run(batch) -> (features, logits)``.
        batch_size: images per inference call.
        workers: decoding threads.
        prefetch: batches decoded ahead of the one being embedded.
    """
    it = iter(items)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: deque[tuple[list[T], list[Future]]] = deque()

        def fill() -> None:
            while len(pending) <= prefetch:
                chunk = list(islice(it, batch_size))
                if not chunk:
                    return
                pending.append((chunk, _prepare_batch(chunk, prepare, pool)))

        fill()
        while pending:
            chunk, futures = pending.popleft()
            fill()
            ok: list[tuple[T, Any, int]] = []
            failed: list[tuple[T, ImageError]] = []
            arrays: list[np.ndarray] = []
            for item, fut in zip(chunk, futures, strict=True):
                try:
                    arr, info = fut.result()
                except ImageError as e:
                    failed.append((item, e))
                    continue
                if arr is None:
                    ok.append((item, info, -1))
                else:
                    ok.append((item, info, len(arrays)))
                    arrays.append(arr)
            if arrays:
                feats, logits = run(np.stack(arrays))
            else:
                feats = np.zeros((0, 0), np.float32)
                logits = np.zeros((0, 0), np.float32)
            yield Batch(ok, failed, feats, logits)

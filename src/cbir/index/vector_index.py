"""Keep the search index of a store in step with its committed features.

The faiss file is derived data: it records the store generation it covers and the
transform it was built with. :func:`refresh` brings it up to date incrementally (add the
new vectors, remove the deleted ids) or rebuilds it where the index type cannot remove
or the transform changed; :func:`load` gives readers an up-to-date index.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import numpy as np

from cbir.codes.base import CodeKind
from cbir.codes.registry import code_kind
from cbir.errors import CbirError, IndexWriteError
from cbir.heads.transform import Transform, load_transform, spec_digest
from cbir.index import faiss_index as fi
from cbir.index.store import IndexStore

TRAIN_SAMPLE = 200_000


def _code(transform: Transform) -> CodeKind:
    return code_kind(transform.kind)


def _first_features(store: IndexStore, limit: int | None = None) -> np.ndarray | None:
    """The backbone features of the first ``limit`` (``TRAIN_SAMPLE``) live rows (None: no
    row); only those are read, never every stored feature."""
    limit = TRAIN_SAMPLE if limit is None else limit
    parts, n = [], 0
    for _, feats in store.iter_features():
        parts.append(feats[: limit - n])
        n += len(parts[-1])
        if n >= limit:
            break
    return np.concatenate(parts) if parts else None


def _sample(store: IndexStore, transform: Transform) -> np.ndarray:
    feats = _first_features(store)
    if feats is None:
        return _code(transform).empty(transform.dim)
    return transform(feats)


def current_transform(store: IndexStore) -> Transform:
    """The transform recorded in the index."""
    return load_transform(store.get_meta("transform") or {"kind": "frozen"}, store.root)


def _fit_transform(store: IndexStore, transform: Transform) -> Transform:
    spec_before = transform.spec()
    feats = _first_features(store)
    if feats is not None:
        transform.fit(feats)
    if transform.spec() != spec_before:
        store.set_meta("transform", transform.spec())
    return transform


def build(store: IndexStore, transform: Transform, index_type: str):
    """A new index of every live image."""
    transform = _fit_transform(store, transform)
    code = _code(transform)
    index = code.make(index_type, transform.dim)
    if code.needs_training(index):
        code.train(index, _sample(store, transform), index_type)
    for ids, feats in store.iter_features():
        code.add(index, transform(feats), ids)
    return index


def _up_to_date(
    store: IndexStore, transform: Transform, index_type: str
) -> tuple[Any, dict | None]:
    """(index, its meta) if the stored index file matches the transform, else (None, meta)."""
    fa = store.get_meta("faiss")
    if (
        not fa
        or fa.get("spec") != spec_digest(transform.spec())
        or fa.get("index_type") != index_type
    ):
        return None, fa
    path = store.root / fa["file"]
    if not path.exists():
        return None, fa
    try:
        return _code(transform).read(path), fa
    except Exception:  # a damaged derived file is rebuilt, never trusted
        return None, fa


def sync(store: IndexStore, index, fa: dict, transform: Transform) -> Any | None:
    """Bring ``index`` (built at generation ``fa['gen']``) up to the store's generation.

    Returns the index, or None when the index type cannot remove and a rebuild is needed.
    """
    built_at = int(fa["gen"])
    live = np.array([r[0] for r in store.conn.execute("SELECT id FROM images")], np.int64)
    stale = np.array(
        [r[0] for r in store.conn.execute("SELECT id FROM images WHERE vgen > ?", (built_at,))],
        np.int64,
    )
    code = _code(transform)
    present = code.ids(index)
    gone = np.setdiff1d(present, live)
    remove = np.union1d(gone, np.intersect1d(stale, present))
    if len(remove) and not code.remove(index, remove):
        return None
    if len(stale):
        feats = store.features(stale.tolist())
        code.add(index, transform(feats), stale)
    return index


def refresh(
    store: IndexStore,
    transform: Transform | None = None,
    index_type: str | None = None,
    force: bool = False,
):
    """Update (or rebuild) the index file to the store's generation; returns the index.

    Needs the writer lock (the caller holds it).
    """
    transform = transform or current_transform(store)
    index_type = index_type or store.config["index_type"]
    gen = store.generation
    index, fa = (
        (None, store.get_meta("faiss")) if force else _up_to_date(store, transform, index_type)
    )
    if index is not None and fa is not None and int(fa["gen"]) == gen:
        return index
    if index is not None and fa is not None:
        index = sync(store, index, fa, transform)
    if index is None:
        index = build(store, transform, index_type)
    code = _code(transform)
    name = f"index-{gen:08d}.{code.ext}"
    try:
        code.write(index, store.root / name)
    except OSError as e:
        why = e.strerror or str(e)
        raise IndexWriteError(
            f"{store.root}: cannot save the search index {name} ({why}); the images are committed"
            " and readers rebuild the search index from them until a later write saves it"
        ) from None
    meta = {
        "file": name,
        "gen": gen,
        "spec": spec_digest(transform.spec()),
        "index_type": index_type,
        "previous": (fa or {}).get("file") if (fa or {}).get("file") != name else None,
    }
    store.set_meta("faiss", meta)
    with contextlib.suppress(OSError):
        store.cleanup()
    return index


def load(store: IndexStore) -> tuple[Any, Transform, int]:
    """(index, transform, generation) for readers: the file if up to date, else built in memory."""
    while True:
        gen = store.generation
        transform = current_transform(store)
        index_type = store.config["index_type"]
        index, fa = _up_to_date(store, transform, index_type)
        if index is not None and fa is not None and int(fa["gen"]) != gen:
            index = sync(store, index, fa, transform)
        if index is None:
            index = build(store, transform, index_type)
        if store.generation == gen:  # no commit happened while we read
            return index, transform, gen


def index_file_size(store: IndexStore) -> int:
    fa = store.get_meta("faiss") or {}
    p = store.root / fa.get("file", "-")
    return os.path.getsize(p) if p.exists() else 0


def check_index_type(index_type: str, transform: Transform, n: int) -> None:
    """Refuse, before anything is embedded, an index type that ``n`` images cannot build.

    Making the empty index checks the type string; one that needs training needs enough
    vectors for faiss's k-means (IVFn: n; PQ: 2**nbits per sub-quantiser, 256 by default).
    """
    index = _code(transform).make(index_type, transform.dim)
    if getattr(index, "is_trained", True):
        return
    need = fi._min_train(index_type)
    if n < need:
        raise CbirError(
            f"--index-type {index_type!r} needs at least {need} vectors (images) to train and"
            f" the collection would have {n}; nothing was indexed. Use --index-type Flat (exact)"
            " or a smaller setting (IVFn needs n images, PQ 256)"
        )

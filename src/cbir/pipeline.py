"""The main job: index a folder of images (incrementally) into an index directory.

Like rclip, a second run embeds only new or changed files: a file whose path, size and
mtime are unchanged is skipped without reading it; a changed file is hashed, and only a
new sha256 is embedded again; content already indexed under another path (a copy, a
move) reuses its stored features; files that are gone are dropped.

Collections change (issue 18): a file whose content (size + sha256) is indexed under a
path that is gone is a *move*: its row keeps its id and features and gets the new path.
``prune`` drops rows whose files are gone under the folder indexed (the default), under
every folder this index has recorded (``True``, ``cbir index --prune``), or nowhere
(``False``); ``exclude`` globs (:func:`cbir.index.collection.excluded`) keep files out and,
with pruning, drop the rows they match.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cbir.backbones import pooling as pooling_mod
from cbir.backbones.embed import embed_stream
from cbir.backbones.registry import (
    DEFAULT,
    backbone_for,
    describe,
    normalize_spec,
    open_backbone,
    recorded_options,
    split_spec,
    top_classes,
)
from cbir.data.folder import find_images
from cbir.data.images import decode, read_bytes
from cbir.errors import CbirError
from cbir.heads.transform import FrozenTransform, Transform
from cbir.index import collection, segments, vector_index
from cbir.index.damage import damaged_under
from cbir.index.metadata import exif_from_bytes, exif_from_file, read_sidecars, stored_sidecars
from cbir.index.store import IndexStore, NewImage, Touch
from cbir.index.summary import IndexSummary

DEFAULT_INDEX_TYPE = "Flat"
DEFAULT_SIZE = 224

__all__ = ["DEFAULT_INDEX_TYPE", "DEFAULT_SIZE", "IndexSummary", "create_or_open", "index_folder"]


def create_or_open(
    index_dir: str | os.PathLike[str],
    index_type: str | None = None,
    size: int | None = None,
    center: bool | None = None,
    transform: Transform | None = None,
    backbone: str | None = None,
    n_images: int | None = None,
    pooling: pooling_mod.Choice | None = None,
    feature_dtype: str | None = None,
) -> IndexStore:
    """Open ``index_dir``, or create it with the given model and index settings.

    Settings given for an existing index must match what it was built with.
    ``backbone``: a registry spec (``cbir.backbones.registry``; default efficientnet-lite0).
    ``n_images``: how many images are about to be indexed; an index type that cannot be
    built for them (and those already indexed) is refused before anything is written.
    ``pooling``: the retrieval pooling of a new index (:class:`cbir.backbones.pooling.Choice`).
    ``feature_dtype``: the dtype of a new index's feature segments (float32 or float16).
    """
    root = Path(index_dir)
    choice = pooling or pooling_mod.Choice()
    segments.check_dtype_name(feature_dtype)
    if IndexStore.exists(root):
        store = IndexStore.open(root)
        cfg = store.config
        segments.refuse_other_dtype(store, cfg, feature_dtype)
        if backbone is not None:
            _check_backbone(store, backbone, size)
        try:
            choice.check(root, cfg["backbone"], store.get_meta("transform", {}))
        except CbirError:
            store.close()
            raise
        if index_type is not None and index_type != cfg["index_type"]:
            raise CbirError(
                f"{root} was built with --index-type {cfg['index_type']!r}, not {index_type!r};"
                " index into another --index directory"
            )
        if size is not None and size != cfg["backbone"]["preprocess"]["size"]:
            raise CbirError(
                f"{root} was built at --size {cfg['backbone']['preprocess']['size']}, not {size};"
                " use another --index directory"
            )
        if center is not None and bool(center) != bool(
            store.get_meta("transform", {}).get("center")
        ):
            built = "--center" if store.get_meta("transform", {}).get("center") else "--no-center"
            store.close()
            raise CbirError(
                f"{root} was built with {built}; leave the option out to update it, or index"
                " into another --index directory"
            )
        if n_images is not None:
            try:
                vector_index.check_index_type(
                    cfg["index_type"],
                    vector_index.current_transform(store),
                    n_images + store.count(),
                )
            except CbirError:
                store.close()
                raise
        if (
            transform is not None
            and hasattr(transform, "backbone")
            and transform.backbone != cfg["backbone"]
        ):
            store.close()
            raise CbirError(
                f"{root} was built with the {describe(cfg['backbone'])}; the model was"
                f" trained with the {describe(transform.backbone)}; index with --model into"
                " a new --index directory"
            )
        if transform is not None:
            have = store.get_meta("transform", {})
            want = transform.spec()
            if have.get("kind") != want.get("kind") or have.get("digest") != want.get("digest"):
                desc = have.get("method") or have.get("kind", "frozen")
                store.close()
                raise CbirError(
                    f"{root} was built with another model ({desc}); index with --model into a new"
                    " --index directory"
                )
        return store
    if transform is not None and hasattr(transform, "backbone"):
        trained = transform.backbone["preprocess"]["size"]
        if size is not None and size != trained:
            raise CbirError(f"the model was trained at --size {trained}, not {size}")
        size = trained
    spec = normalize_spec(backbone or DEFAULT)
    if transform is not None and hasattr(transform, "backbone") and split_spec(spec)[0] != DEFAULT:
        raise CbirError(
            f"a --model run is trained on {DEFAULT} features; index it without --backbone"
        )
    options = {"size": size or (DEFAULT_SIZE if split_spec(spec)[0] == DEFAULT else None)}
    options.update(choice.options(split_spec(spec)[0]))
    if transform is not None and getattr(transform, "backbone_weights", None) is not None:
        options["weights"] = transform.backbone_weights
    bb = open_backbone(spec, **options)
    if (
        transform is not None
        and hasattr(transform, "backbone")
        and transform.backbone != bb.fingerprint
    ):
        raise CbirError("the model was trained on another backbone; retrain it with this cbir")
    # a new index is centred unless asked not to be (docs/evaluation.md); an image-text
    # backbone's is not: text queries share the uncentred space (docs/text.md)
    if center is None:
        center = getattr(bb, "embed_text", None) is None
    transform = transform or FrozenTransform(
        dim=bb.dim, center=center, whiten=pooling_mod.whitens(bb.fingerprint, choice.whiten)
    )
    if n_images is not None:
        vector_index.check_index_type(index_type or DEFAULT_INDEX_TYPE, transform, n_images)
    config = {
        "backbone": bb.fingerprint,
        "feature_dim": bb.dim,
        "index_type": index_type or DEFAULT_INDEX_TYPE,
        "kind": transform.kind,
    }
    if feature_dtype not in (None, segments.DEFAULT_DTYPE):
        config["feature_dtype"] = feature_dtype
    if spec != DEFAULT:  # an index without a spec was built by efficientnet-lite0
        config["backbone_spec"] = spec
        config["backbone_options"] = recorded_options(
            {k: v for k, v in options.items() if k != "weights"}
        )
    store = IndexStore.create(root, config)
    if hasattr(transform, "install"):
        transform.install(store.root)
    store.set_meta("transform", transform.spec())
    return store


def _check_backbone(store: IndexStore, spec: str, size: int | None) -> None:
    """Refuse ``--backbone spec`` for an index built with another backbone."""
    cfg = store.config
    have = cfg["backbone"]
    recorded = cfg.get("backbone_spec") or have.get("backbone", DEFAULT)
    spec = normalize_spec(spec)
    same = spec == recorded
    if not same and split_spec(spec)[0] == split_spec(recorded)[0] != DEFAULT:
        pre = have["preprocess"]
        want = open_backbone(
            spec, **{**cfg.get("backbone_options", {}), "size": size or pre["size"]}
        )
        same = want.fingerprint == have
    if not same:
        store.close()
        raise CbirError(
            f"{store.root} was built with the {describe(have)} ({recorded}), not --backbone {spec};"
            " use another --index directory, or leave --backbone out to update it"
        )


def _remove_new_index(root: Path, before: set[str] | None) -> None:
    """Remove an index this run created: the folder, or (a folder that was there before)
    only the entries this run added."""
    import shutil

    if before is None:
        shutil.rmtree(root, ignore_errors=True)
        return
    for name in set(os.listdir(root)) - before:
        p = root / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _unfitted(store: IndexStore) -> Transform:
    """The index's centred transform with its mean forgotten (refit at the rebuild)."""
    transform = vector_index.current_transform(store)
    if not getattr(transform, "center", False) or not hasattr(transform, "unfit"):
        raise CbirError(
            f"{store.root} is not centred (built with --no-center or a --model), so there is"
            " no mean to refit; leave out --refit-center"
        )
    transform.unfit()
    return transform


def _first_fit(store: IndexStore) -> Transform | None:
    """The transform of a centred index whose earlier builds had no image to fit its mean
    on, now that it has images (else None)."""
    transform = vector_index.current_transform(store)
    if getattr(transform, "center", False) and transform.mean is None and store.count():
        return transform
    return None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def index_folder(
    images_dir: str | os.PathLike[str],
    index_dir: str | os.PathLike[str],
    *,
    batch_size: int = 64,
    workers: int = 2,
    index_type: str | None = None,
    size: int | None = None,
    center: bool | None = None,
    commit_every: int = 4096,
    progress: bool | None = None,
    model: str | os.PathLike[str] | None = None,
    engine: Any = None,
    backbone: str | None = None,
    prune: bool | None = None,
    exclude: Sequence[str] = (),
    refit_center: bool = False,
    pooling: pooling_mod.Choice | None = None,
    feature_dtype: str | None = None,
) -> IndexSummary:
    """Index (or update the index of) every image under ``images_dir``.

    ``model``: a ``cbir train`` run directory (or checkpoint): the index then holds that
    head's codes or embeddings (the checkpoint is copied into the index).
    ``backbone``: the backbone of a new index, a registry spec such as
    ``efficientnet-lite0`` (the default) or ``onnx:PATH.onnx``; an existing index keeps its own
    (another one is refused).
    ``prune``: drop rows whose files are gone (or match ``exclude``) under ``images_dir``
    (None, the default), under every folder indexed into ``index_dir`` so far (True), or
    keep them (False). ``exclude``: globs of files not to index (``--exclude``).
    ``engine``: None embeds here (decoding threads + onnxruntime); otherwise an object
    whose ``embed(todo, classify, backbone, batch_size)`` yields the same ``Batch``es in
    order (e.g. :class:`cbir.distributed.ray_embed.RayEngine`).
    ``center``: None centres a new index on its mean (fitted at its first build) and keeps
    an existing index's setting; False opts out. ``refit_center``: fit the mean again on
    every image now indexed (the search index is rebuilt). ``pooling``: the retrieval
    pooling of a new index (:class:`cbir.backbones.pooling.Choice`: pooling, scales, flip,
    power, whiten); an existing index keeps its own (others are refused).
    ``feature_dtype``: float32 (default) or float16 segments of a new index (half the bytes).
    """
    t0 = time.perf_counter()
    root = Path(os.path.abspath(os.fspath(images_dir)))
    if not root.exists():
        raise CbirError(f"{images_dir}: no such folder")
    target = Path(os.path.abspath(os.fspath(index_dir)))
    fresh = not IndexStore.exists(target)
    if fresh and not target.parent.is_dir():  # create the index folder, never a chain
        raise CbirError(
            f"{index_dir}: its parent folder {target.parent} does not exist; create it first"
        )
    before = set(os.listdir(target)) if fresh and target.is_dir() else None
    found = find_images(root)
    files = [p for p in found if not collection.excluded(p, root, exclude)]
    if not files and not IndexStore.exists(index_dir):
        if found:
            raise CbirError(
                f"{images_dir}: all {len(found)} images match --exclude {' '.join(exclude)};"
                " nothing to index"
            )
        raise CbirError(
            f"{images_dir}: no images found (looked for jpg, png, webp, bmp, gif, tiff)"
        )
    transform = None
    if model is not None:
        from cbir.codes.registry import code_kind
        from cbir.heads.learned import LearnedTransform

        transform = LearnedTransform.from_path(model)
        if index_type is None and not IndexStore.exists(index_dir):
            index_type = code_kind(transform).default_index_type  # BFlat, Inverted, Flat
    store = create_or_open(
        index_dir,
        index_type,
        size,
        center,
        transform=transform,
        backbone=backbone,
        n_images=len(files),
        pooling=pooling,
        feature_dtype=feature_dtype,
    )
    summary = IndexSummary(images_dir=str(root), index_dir=str(index_dir), found=len(files))
    summary.excluded = len(found) - len(files)
    store.lock()
    try:
        sweep: list[str] | None = None  # the folders whose stale rows are dropped
        if prune is None:
            sweep = [str(root)]
        elif prune:  # every recorded folder that is still there (a gone one may be unmounted)
            known = collection.roots(store)
            summary.missing_roots = [r for r in known if r != str(root) and not os.path.isdir(r)]
            sweep = sorted({str(root), *known} - set(summary.missing_roots))
        refit = _unfitted(store) if refit_center else None  # refused before any embedding
        _index_files(
            store,
            root,
            files,
            summary,
            batch_size,
            workers,
            commit_every,
            progress,
            engine,
            sweep,
            exclude,
        )
        collection.record_root(store, str(root))
        try:
            unfitted = _first_fit(store)  # rebuilt (and fitted) when not fitted yet
            vector_index.refresh(store, transform=refit or unfitted, force=unfitted is not None)
        except Exception as e:  # a new index whose search index cannot be built: roll back
            if not fresh:
                raise
            store.close()
            _remove_new_index(target, before)
            why = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise CbirError(
                f"{index_dir}: the search index could not be built ({why}); nothing was kept"
            ) from None
        if refit is not None:
            summary.refit_center = refit.fitted
        store.compact()
        summary.total = store.count()
    finally:
        store.close()
    summary.seconds = round(time.perf_counter() - t0, 3)
    return summary


def _index_files(
    store: IndexStore,
    root: Path,
    files: list[Path],
    summary: IndexSummary,
    batch_size: int,
    workers: int,
    commit_every: int,
    progress: bool | None,
    engine: Any = None,
    sweep: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
) -> None:
    backbone = backbone_for(store)
    existing = store.rows_under(str(root))
    damaged = damaged_under(store, root, {row["id"] for row in existing.values()})
    seen: set[str] = set()
    todo: list[tuple[str, os.stat_result]] = []
    for p in files:
        path = str(p)
        seen.add(path)
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:  # the index stores paths as UTF-8 text
            shown = os.fsencode(path).decode("utf-8", "backslashreplace")
            summary.failed.append(
                {
                    "path": shown,
                    "reason": "bad-name",
                    "detail": "the file name is not UTF-8; rename it",
                }
            )
            continue
        try:
            st = p.stat()
        except OSError as e:
            summary.failed.append(
                {"path": path, "reason": "unreadable", "detail": e.strerror or str(e)}
            )
            continue
        row = existing.get(path)
        if (
            row is not None
            and row["id"] not in damaged
            and row["size"] == st.st_size
            and row["mtime_ns"] == st.st_mtime_ns
        ):
            summary.unchanged += 1
            continue
        todo.append((path, st))
    gone: list[int] = []
    if sweep is not None:  # rows under ROOT not found now (gone or excluded), then the rest
        gone = [row["id"] for path, row in existing.items() if path not in seen]
        other = [r for r in sweep if r != str(root)]
        gone += [r["id"] for r in collection.stale_rows(store, other, exclude)]
        gone = sorted(set(gone))
    # Sidecar metadata (metadata.csv / metadata.json / IMG.json) is re-read every run:
    # rows whose fields changed are rewritten in the final commit, with the deletions.
    sidecars = read_sidecars(root, files)
    stored_side = stored_sidecars(store.conn)
    sidecar_updates = {
        row["id"]: sidecars.get(path, {})
        for path, row in existing.items()
        if path in seen and sidecars.get(path, {}) != stored_side.get(row["id"], {})
    }
    by_sha: dict[str, list[tuple[int, str, int]]] = {}
    for r in store.conn.execute("SELECT id, path, sha256, size FROM images ORDER BY id"):
        if r[0] not in damaged:  # a row with lost features is no source of features
            by_sha.setdefault(r[2], []).append((r[0], r[1], r[3]))
    known_sha = {sha: rows[-1][0] for sha, rows in by_sha.items()}
    moved: set[int] = set()  # rows given a new path in this run
    claim = threading.Lock()  # classify runs in the decoding threads
    size = backbone.preprocess.size

    def moved_row(path: str, sha: str, nbytes: int) -> tuple[int, str] | None:
        """An indexed row with this content (size + sha256) whose file is gone: a move."""
        if path in existing:
            return None
        with claim:
            for id_, old_path, old_size in by_sha.get(sha, ()):
                if id_ in moved or old_size != nbytes or old_path in seen:
                    continue
                if collection.is_gone(old_path):
                    moved.add(id_)
                    return id_, old_path
        return None

    def classify(item: tuple[str, os.stat_result], sha: str, nbytes: int) -> dict[str, Any]:
        """``info`` of a read file; "touch" or "reuse" in it when nothing needs embedding."""
        path, st = item
        info: dict[str, Any] = {"sha": sha, "size": nbytes, "mtime_ns": st.st_mtime_ns}
        old = existing.get(path)
        if old is not None and old["id"] in damaged and old["sha256"] == sha:
            info["repair"] = old["id"]  # same content, lost features: embed again, keep the id
        if old is not None and old["sha256"] == sha and "repair" not in info:
            info["touch"] = old["id"]
        elif sha in known_sha and (move := moved_row(path, sha, nbytes)) is not None:
            info["touch"], info["moved_from"] = move
        elif sha in known_sha:
            info["reuse"] = known_sha[sha]
            info["width"], info["height"] = None, None
        return info

    def prepare(item: tuple[str, os.stat_result]) -> tuple[np.ndarray | None, dict]:
        path, _st = item
        data = read_bytes(path)
        info = classify(item, _sha256(data), len(data))
        if "touch" not in info:
            info["exif"] = exif_from_bytes(data)
        if "touch" in info or "reuse" in info:
            return None, info
        img = decode(data, path, draft_size=size)
        info["width"], info["height"] = img.info.get("orig_size", img.size)
        return backbone.preprocess(img), info

    added: list[NewImage] = []
    feats: list[np.ndarray] = []
    touched: list[Touch] = []
    embedded, t_embed = 0, time.perf_counter()
    show = sys.stderr.isatty() if progress is None else progress
    bar = None
    if show and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="img", desc="indexing", file=sys.stderr)

    def flush(final: bool = False) -> None:
        nonlocal added, feats, touched
        if not (added or touched or (final and (gone or sidecar_updates))):
            return
        f = np.concatenate(feats) if feats else None
        dropped = [g for g in gone if g not in moved] if final else ()
        store.commit(added, f, touched, dropped, sidecars=sidecar_updates if final else None)
        added, feats, touched = [], [], []

    if engine is None:
        batches = embed_stream(todo, prepare, backbone.run, batch_size, workers)
    else:
        batches = engine.embed(todo, classify, backbone, batch_size)
    for batch in batches:
        extras = top_classes(batch.logits) if batch.logits.size else []
        reuse_ids = [info["reuse"] for _, info, row in batch.ok if row < 0 and "reuse" in info]
        reuse_feats = (
            dict(zip(reuse_ids, store.features(reuse_ids), strict=True)) if reuse_ids else {}
        )
        for (path, _st), info, row in batch.ok:
            if "moved_from" in info:  # same id and features, new path (and its sidecar)
                touched.append(Touch(info["touch"], info["size"], info["mtime_ns"], path))
                side = sidecars.get(path, {})
                if side != stored_side.get(info["touch"], {}):
                    sidecar_updates[info["touch"]] = side
                summary.moved += 1
                continue
            if "touch" in info:
                touched.append(Touch(info["touch"], info["size"], info["mtime_ns"]))
                summary.touched += 1
                continue
            im = NewImage(
                path,
                info["sha"],
                info["size"],
                info["mtime_ns"],
                info.get("width"),
                info.get("height"),
            )
            exif = info["exif"] if "exif" in info else exif_from_file(path)
            im.meta = {"sidecar": sidecars.get(path, {}), "exif": exif}
            if "repair" in info:
                im.tags = existing[path]["tags"]
            if row >= 0:
                im.extra = {"imagenet": extras[row]} if extras else {}
                feats.append(batch.features[row : row + 1])
                embedded += 1
            else:
                src = store.row(info["reuse"])
                if src is not None:
                    im.width, im.height, im.extra = (
                        src["width"],
                        src["height"],
                        json.loads(src["extra"]),
                    )
                feats.append(reuse_feats[info["reuse"]][None])
                if "repair" not in info:
                    summary.reused += 1
            added.append(im)
            if "repair" in info:
                summary.repaired += 1
            else:
                summary.indexed += 1
            damaged.pop(existing[path]["id"] if path in existing else -1, None)
        for (path, _st), err in batch.failed:
            summary.failed.append({"path": path, "reason": err.reason, "detail": err.detail})
        if bar is not None:
            bar.update(len(batch.ok) + len(batch.failed))
        if len(added) >= commit_every:
            flush()
    # Rows still without features: their file is gone, or it could not be read or decoded
    # this time. Such a row can never be searched again: it is removed, and named.
    for d in damaged.values():
        file = "the file is gone" if d.path not in seen else "the file cannot be read"
        summary.lost.append({"id": d.id, "path": d.path, "why": d.why, "file": file})
    gone = sorted(set(gone) | set(damaged))
    flush(final=True)
    if bar is not None:
        bar.close()
    summary.removed = len([g for g in gone if g not in moved and g not in damaged])
    dt = time.perf_counter() - t_embed
    summary.embedded_per_s = round(embedded / dt, 1) if embedded and dt > 0 else 0.0

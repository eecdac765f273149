"""Library-level edits of an index: add one image from its bytes, delete images by id.

Each call is one writer: it takes the index's writer lock (waiting a little for another
writer), commits through :meth:`IndexStore.commit` and brings the search index up to the
new generation, so readers see the old index or the new one, never half of a change.
Uploaded images are kept under ``INDEX_DIR/uploads/<sha256>.<ext>`` (written atomically).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cbir.backbones.registry import backbone_for, top_classes
from cbir.data.images import decode, sniff
from cbir.errors import CbirError, IndexWriteError
from cbir.index import vector_index
from cbir.index.metadata import exif_from_bytes
from cbir.index.store import IndexStore, NewImage, write_error
from cbir.utils import atomic_write_bytes

UPLOADS = "uploads"
#: File name ending of an upload, by the format sniffed from its bytes.
EXTENSIONS = {
    "JPEG": "jpg",
    "MPO": "jpg",
    "PNG": "png",
    "GIF": "gif",
    "WEBP": "webp",
    "BMP": "bmp",
    "TIFF": "tif",
}
MAX_TAGS = 32
MAX_TAG_LEN = 64


class IndexBusyError(CbirError):
    """Another writer held the index's lock for longer than we waited."""


@dataclass
class Added:
    """The result of :func:`add_image_bytes`: ``created`` is False for content already uploaded."""

    id: int
    path: str
    sha256: str
    created: bool


def normalize_tags(tags: str | Iterable[str] | None) -> str:
    """Tags as stored: lower-case, comma-separated, de-duplicated, in the order given.

    Raises CbirError for a tag that is too long or has control characters, or too many tags.
    """
    if tags is None:
        return ""
    items = tags.split(",") if isinstance(tags, str) else list(tags)
    out: list[str] = []
    for t in items:
        t = t.strip().lower()
        if not t:
            continue
        if len(t) > MAX_TAG_LEN or any(ord(ch) < 32 or ch == "," for ch in t):
            raise CbirError(
                f"tag {t[:20]!r}...: tags are at most {MAX_TAG_LEN} printable characters, no commas"
            )
        if t not in out:
            out.append(t)
    if len(out) > MAX_TAGS:
        raise CbirError(f"{len(out)} tags: at most {MAX_TAGS} per image")
    return ",".join(out)


def tag_set(stored: str) -> set[str]:
    """The set of tags in a stored tags string."""
    return {t for t in stored.split(",") if t}


def uploads_dir(index_dir: str | os.PathLike[str]) -> Path:
    """Where uploaded images of an index are kept."""
    return Path(os.path.abspath(os.fspath(index_dir))) / UPLOADS


def _lock(store: IndexStore, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            store.lock()
            return
        except IndexWriteError:
            raise
        except CbirError:
            if time.monotonic() >= deadline:
                raise IndexBusyError(
                    f"{store.root}: another writer holds the index (waited {wait_s:g} s); try again"
                ) from None
            time.sleep(0.05)


def add_image_bytes(
    index_dir: str | os.PathLike[str],
    data: bytes,
    name: str = "<upload>",
    tags: str | Iterable[str] | None = None,
    *,
    wait_s: float = 30.0,
) -> Added:
    """Add one encoded image to an index; returns its id.

    The bytes are decoded safely (type sniffed from the content, bombs refused: ImageError),
    embedded with the index's backbone, saved as ``uploads/<sha256>.<ext>`` and committed.
    The same content uploaded again keeps its id (its tags are replaced when given).
    """
    tag_str = normalize_tags(tags)
    store = IndexStore.open(index_dir)
    try:
        backbone = backbone_for(store)
        img = decode(data, name, draft_size=backbone.preprocess.size)
        fmt = sniff(data[:16]) or "JPEG"
        sha = hashlib.sha256(data).hexdigest()
        path = uploads_dir(index_dir) / f"{sha}.{EXTENSIONS.get(fmt, 'img')}"
        existing = store.row_by_path(str(path))
        if existing is not None and existing["sha256"] == sha:
            if tags is not None and existing["tags"] != tag_str:
                store.set_tags(existing["id"], tag_str)
            return Added(int(existing["id"]), str(path), sha, False)
        feats, logits = backbone.run(backbone.preprocess(img)[None])
        width, height = img.info.get("orig_size", img.size)
        _lock(store, wait_s)
        if not path.exists() or path.stat().st_size != len(data):
            try:
                atomic_write_bytes(path, data)
            except OSError as e:
                raise write_error(store.root, e, f"save the upload {path.name}") from None
        im = NewImage(
            str(path),
            sha,
            len(data),
            path.stat().st_mtime_ns,
            width,
            height,
            tag_str,
            {"imagenet": top_classes(logits)[0], "upload": {"name": name[:200]}},
            meta={"sidecar": {}, "exif": exif_from_bytes(data)},  # text search: cbir.search.text
        )
        result = store.commit([im], feats)
        vector_index.refresh(store)
        ids = result["added"] or result["replaced"]
        return Added(ids[0], str(path), sha, bool(result["added"]))
    finally:
        store.close()


def delete_ids(
    index_dir: str | os.PathLike[str], ids: Sequence[int], *, wait_s: float = 30.0
) -> list[int]:
    """Delete images by id in one commit; returns the ids that existed.

    Uploaded files (under ``uploads/``) that no image refers to any more are removed.
    """
    store = IndexStore.open(index_dir)
    try:
        _lock(store, wait_s)
        rows = store.rows(list(ids))
        deleted = store.delete([r["id"] for r in rows])
        if deleted:
            vector_index.refresh(store)
        up = uploads_dir(index_dir)
        for r in rows:
            p = Path(r["path"])
            if p.parent == up and store.row_by_path(r["path"]) is None:
                try:
                    p.unlink()
                except OSError:
                    pass
        return deleted
    finally:
        store.close()

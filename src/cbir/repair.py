"""``cbir repair INDEX``: rebuild what can be rebuilt of a damaged index.

- Rows whose stored features are lost (:mod:`cbir.index.damage`: a segment file gone,
  truncated, of another shape, non-finite numbers) get them back, keeping their ids, tags
  and metadata: copied from another row with the same content (sha256), else embedded again
  from their file by the backbone the index records, when the file still holds the content
  that was indexed (its sha256 is checked).
- Rows that cannot be repaired (file gone, changed since it was indexed, unreadable) are
  named; with ``drop_lost`` they are removed (their ids are never reused).
- The search index file is rebuilt from the stored features, and left-over files go.

Writes are those of every other write (:meth:`IndexStore.commit`): the new segment first
(temp file, fsync, rename), then one SQLite transaction as the commit point.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from cbir.backbones.embed import embed_stream
from cbir.backbones.registry import backbone_for
from cbir.data.images import decode, read_bytes
from cbir.errors import ImageError
from cbir.index import vector_index
from cbir.index.damage import Damaged, damaged_rows
from cbir.index.store import IndexStore, NewImage

#: Rows re-embedded per commit (as ``cbir index`` commits).
COMMIT_EVERY = 4096


@dataclass
class RepairReport:
    """What :func:`repair_index` did; ``whole`` is True when nothing is left to repair."""

    index_dir: str
    damaged: int = 0
    repaired: list[int] = field(default_factory=list)
    #: rows that could not be repaired: id, path, why (the features), file (the file's state)
    lost: list[dict[str, Any]] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    #: the search index file written, None when it could not be rebuilt (rows left lost)
    search_index: str | None = None
    seconds: float = 0.0

    @property
    def whole(self) -> bool:
        return len(self.dropped) == len(self.lost)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["whole"] = self.whole
        return d

    def lines(self) -> list[str]:
        """A human-readable summary."""
        out = [
            f"{self.index_dir}: {self.damaged} row(s) had lost their stored features,"
            f" {len(self.repaired)} repaired, {len(self.lost)} could not be repaired"
            + (f" ({len(self.dropped)} removed)" if self.dropped else "")
            + (
                f"; search index {self.search_index} rebuilt"
                if self.search_index
                else "; the search index cannot be rebuilt while rows lack features"
            )
            + f" ({self.seconds:.1f} s)"
        ]
        for lost in self.lost[:50]:
            gone = " (removed)" if lost["id"] in self.dropped else ""
            out.append(f"  not repaired: {lost['path']} (id {lost['id']}): {lost['file']}{gone}")
        if len(self.lost) > 50:
            out.append(f"  ... and {len(self.lost) - 50} more (see --json)")
        if not self.whole:
            out.append(
                "  restore these files and run `cbir repair` again, or remove their rows with"
                f" `cbir repair {self.index_dir} --drop-lost`"
            )
        return out


def repair_index(
    index_dir: str | os.PathLike[str],
    *,
    drop_lost: bool = False,
    batch_size: int = 32,
    workers: int = 2,
) -> RepairReport:
    """Repair ``index_dir`` (see the module docstring); takes the writer lock.

    Args:
        index_dir: the index directory.
        drop_lost: remove the rows that cannot be repaired (else they are left, named, and
            the search index cannot be rebuilt until they are).
        batch_size: images per backbone call.
        workers: decoding threads.
    """
    t0 = time.perf_counter()
    report = RepairReport(index_dir=str(index_dir))
    store = IndexStore.open(index_dir)
    try:
        store.lock()
        damaged = damaged_rows(store, values=True)
        report.damaged = len(damaged)
        found = _recover(store, damaged, report, batch_size, workers)
        drop = [d["id"] for d in report.lost] if drop_lost else []
        _commit(store, found, drop)
        report.repaired = sorted(found)
        report.dropped = sorted(drop)
        if report.whole:
            store.compact()
            vector_index.refresh(store, force=True)
            report.search_index = (store.get_meta("faiss") or {}).get("file")
    finally:
        store.close()
    report.seconds = round(time.perf_counter() - t0, 3)
    return report


def _recover(
    store: IndexStore,
    damaged: dict[int, Damaged],
    report: RepairReport,
    batch_size: int,
    workers: int,
) -> dict[int, np.ndarray]:
    """Features for the damaged rows that can get them back, by id; the others in
    ``report.lost``."""
    found: dict[int, np.ndarray] = {}
    todo: list[Damaged] = []
    for d in sorted(damaged.values(), key=lambda d: d.id):
        twins = [i for i in store.ids_by_sha(d.sha256) if i not in damaged]
        if twins:
            found[d.id] = store.features(twins[:1])[0]
        else:
            todo.append(d)
    if not todo:
        return found
    backbone = backbone_for(store)
    size = backbone.preprocess.size

    def prepare(d: Damaged) -> tuple[np.ndarray, None]:
        if not os.path.lexists(d.path):
            raise ImageError(d.path, "gone", "the file is gone")
        data = read_bytes(d.path)
        if hashlib.sha256(data).hexdigest() != d.sha256:
            raise ImageError(d.path, "changed", "the file changed since it was indexed")
        return backbone.preprocess(decode(data, d.path, draft_size=size)), None

    for batch in embed_stream(todo, prepare, backbone.run, batch_size, workers):
        for d, _info, row in batch.ok:
            found[d.id] = np.asarray(batch.features[row], np.float32)
        for d, err in batch.failed:
            why = {"gone": "the file is gone", "changed": "the file changed since it was indexed"}
            file = why.get(err.reason) or f"the file cannot be read ({err.reason}: {err.detail})"
            report.lost.append({"id": d.id, "path": d.path, "why": d.why, "file": file})
    return found


def _commit(store: IndexStore, found: dict[int, np.ndarray], drop: list[int]) -> None:
    """Commit the recovered features (same ids, tags, metadata) and the removals."""
    ids = sorted(found)
    if not ids and not drop:
        return
    rows = {r["id"]: r for r in store.rows(ids)}
    for start in range(0, max(len(ids), 1), COMMIT_EVERY):
        chunk = ids[start : start + COMMIT_EVERY]
        added = [
            NewImage(
                rows[i]["path"],
                rows[i]["sha256"],
                rows[i]["size"],
                rows[i]["mtime_ns"],
                rows[i]["width"],
                rows[i]["height"],
                rows[i]["tags"],
                json.loads(rows[i]["extra"]),
            )
            for i in chunk
        ]
        last = start + COMMIT_EVERY >= len(ids)
        feats = np.stack([found[i] for i in chunk]) if chunk else None
        store.commit(added, feats, deleted=drop if last else ())

"""The folders an index covers: recorded roots, ``--exclude`` globs, files gone, ``cbir prune``.

Every ``cbir index ROOT`` records ROOT in the index (meta ``roots``). That gives
``cbir index --prune`` the folders to sweep for files that are gone, ``cbir check`` the
folder to name when files changed, and :func:`prune_missing` (``cbir prune``) the rows
whose files are gone anywhere. Files the index itself owns (``INDEX_DIR/uploads``) are
never pruned: a missing upload is damage for ``cbir check`` to report, not a move.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath
from typing import Any

from cbir.index import vector_index
from cbir.index.store import IndexStore

ROOTS_KEY = "roots"


def excluded(
    path: str | os.PathLike[str], root: str | os.PathLike[str], globs: Sequence[str]
) -> bool:
    """True if ``path`` (under ``root``) matches one of ``globs`` (``--exclude``).

    A glob matches the path relative to ``root`` (``raw/*``, ``*.png``; ``*`` crosses
    ``/``) or any one name on it (a file name such as ``*_thumb.jpg``, or a folder such as
    ``.thumbnails`` or ``@eaDir``, which excludes everything under it).
    """
    if not globs:
        return False
    try:
        rel = PurePosixPath(Path(os.fspath(path)).relative_to(os.fspath(root)).as_posix())
    except ValueError:
        rel = PurePosixPath(Path(os.fspath(path)).as_posix())
    text = rel.as_posix()
    return any(fnmatchcase(text, g) or any(fnmatchcase(p, g) for p in rel.parts) for g in globs)


def roots(store: IndexStore) -> list[str]:
    """The folders indexed into ``store`` so far (absolute paths, sorted)."""
    return sorted(store.get_meta(ROOTS_KEY, []) or [])


def record_root(store: IndexStore, root: str) -> None:
    """Add ``root`` to the recorded roots; forget roots that are gone and hold no row."""
    keep = {
        r
        for r in roots(store)
        if r == root or os.path.exists(r) or store.rows_under(r)  # a moved or deleted root
    }
    keep.add(root)
    if sorted(keep) != roots(store):
        store.set_meta(ROOTS_KEY, sorted(keep))


def root_of(path: str, known: Iterable[str]) -> str:
    """The innermost recorded root holding ``path``; else the file's folder."""
    best = ""
    for r in known:
        if (path == r or path.startswith(r.rstrip(os.sep) + os.sep)) and len(r) > len(best):
            best = r
    return best or os.path.dirname(path)


def by_root(paths: Iterable[str], known: Iterable[str]) -> dict[str, list[str]]:
    """``paths`` grouped by :func:`root_of` (the folder to re-index for each)."""
    known = list(known)
    out: dict[str, list[str]] = {}
    for p in paths:
        out.setdefault(root_of(p, known), []).append(p)
    return dict(sorted(out.items()))


def is_gone(path: str) -> bool:
    """True when no file is at ``path`` any more."""
    return not os.path.isfile(path)


def _uploads(store: IndexStore) -> str:
    return os.path.join(os.path.abspath(store.root), "uploads") + os.sep


def stale_rows(
    store: IndexStore, under: Sequence[str] | None = None, exclude: Sequence[str] = ()
) -> list[sqlite3.Row]:
    """Rows whose file is gone (or matches ``exclude``), under the folders ``under`` or
    anywhere (None); the index's own uploads are never included."""
    uploads = _uploads(store)
    if under is None:
        rows = [r for r in store.rows() if not r["path"].startswith(uploads)]
        return [r for r in rows if is_gone(r["path"])]
    out: dict[int, sqlite3.Row] = {}
    for root in under:
        for path, r in store.rows_under(root).items():
            if path.startswith(uploads):
                continue
            if is_gone(path) or excluded(path, root, exclude):
                out[r["id"]] = r
    return [out[i] for i in sorted(out)]


@dataclass
class PruneResult:
    """What :func:`prune_missing` found (and, unless ``dry_run``, dropped)."""

    index_dir: str
    dry_run: bool
    missing: list[dict[str, Any]] = field(default_factory=list)  # {"id", "path"}
    removed: int = 0
    total: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        if self.dry_run:
            head = (
                f"{len(self.missing)} indexed file(s) no longer on disk (dry run: nothing dropped)"
            )
        else:
            head = f"dropped {self.removed} row(s) whose files are gone -> {self.total} in {self.index_dir}"
        return [head] + [f"  {m['path']}" for m in self.missing]


def prune_missing(index_dir: str | os.PathLike[str], *, dry_run: bool = False) -> PruneResult:
    """Drop the rows of ``index_dir`` whose files are gone, wherever they were (``cbir prune``).

    One commit (ids are never reused); the search index is brought up to date. ``dry_run``
    lists them and changes nothing.
    """
    store = IndexStore.open(index_dir)
    try:
        if not dry_run:
            store.lock()
        gone = stale_rows(store)
        result = PruneResult(
            str(index_dir), dry_run, [{"id": int(r["id"]), "path": r["path"]} for r in gone]
        )
        if gone and not dry_run:
            result.removed = len(store.delete([r["id"] for r in gone]))
            vector_index.refresh(store)
            store.compact()
            record = [r for r in roots(store) if os.path.exists(r) or store.rows_under(r)]
            if record != roots(store):
                store.set_meta(ROOTS_KEY, record)
        result.total = store.count()
    finally:
        store.close()
    return result

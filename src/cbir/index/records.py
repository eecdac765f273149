"""The rows of an index's ``meta.sqlite``: its schema, the records a commit takes
(:class:`NewImage`, :class:`Touch`), and the checks that turn a damaged database into one
clear error (:func:`config_problem`, :func:`_text_factory`)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cbir.errors import IndexDamagedError, IndexWriteError
from cbir.index.segments import dtype_problem

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL UNIQUE,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    width INTEGER,
    height INTEGER,
    tags TEXT NOT NULL DEFAULT '',
    extra TEXT NOT NULL DEFAULT '{}',
    seg INTEGER NOT NULL,
    row INTEGER NOT NULL,
    vgen INTEGER NOT NULL,
    added REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS images_sha ON images(sha256);
CREATE INDEX IF NOT EXISTS images_seg ON images(seg);
CREATE TABLE IF NOT EXISTS segments (gen INTEGER PRIMARY KEY, file TEXT NOT NULL, n INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    query TEXT NOT NULL,
    result_id INTEGER NOT NULL,
    relevant INTEGER NOT NULL,
    created REAL NOT NULL
);
"""


@dataclass
class NewImage:
    """An image to add (or to replace the vector of, when ``path`` is already indexed)."""

    path: str
    sha256: str
    size: int
    mtime_ns: int
    width: int | None = None
    height: int | None = None
    tags: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    #: {"sidecar": fields, "exif": fields} (cbir.index.metadata); None keeps what is stored.
    meta: dict[str, dict[str, Any]] | None = None


@dataclass
class Touch:
    """A file whose size/mtime changed but whose content (sha256) did not; ``path``: moved."""

    id: int
    size: int
    mtime_ns: int
    path: str | None = None


def write_error(root: Path, e: BaseException, what: str = "write the index") -> IndexWriteError:
    """A one-line error for a failed write (full disk, read-only folder, permissions)."""
    why = (e.strerror or str(e)) if isinstance(e, OSError) else str(e)
    return IndexWriteError(f"{root}: cannot {what} ({why}); the last committed state is intact")


def _schema(conn: sqlite3.Connection) -> Any:
    return json.loads(conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0])


def _text_factory(db: Path) -> Any:
    """SQLite text as ``str``; text that is not UTF-8 (damaged pages) is IndexDamagedError."""

    def text(b: bytes) -> str:
        try:
            return str(b, "utf-8")
        except UnicodeDecodeError:
            shown = b[:60].decode("utf-8", "backslashreplace")
            raise IndexDamagedError(db, f"a stored text is not UTF-8: {shown!r}") from None

    return text


def config_problem(config: Any) -> str | None:
    """What is wrong with a stored ``config`` (None: nothing cbir would trip over)."""
    if not isinstance(config, dict):
        return f"meta 'config' is {type(config).__name__}, not an object"
    bb = config.get("backbone")
    if (
        not isinstance(bb, dict)
        or "backbone" not in bb
        or not isinstance(bb.get("preprocess"), dict)
    ):
        return "meta 'config' has no backbone fingerprint"
    if not isinstance(config.get("feature_dim"), int) or not isinstance(
        config.get("index_type"), str
    ):
        return "meta 'config' lacks feature_dim or index_type"
    return dtype_problem(config)

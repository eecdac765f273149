"""INDEX_DIR: SQLite metadata, append-only feature segments, a derived faiss index.

Layout::

    INDEX_DIR/meta.sqlite        images(id, path, sha256, size, mtime_ns, ...), segments, meta
    INDEX_DIR/features-<gen>.npy backbone features of the images added at generation <gen>
    INDEX_DIR/index-<gen>.faiss  the search index (derived: rebuilt from features if lost)

A commit writes its new segment file first (temp, fsync, rename), then changes the
SQLite rows and the generation number in one transaction: that transaction is the commit
point. A crash before it leaves an orphan segment (removed later) and the previous state
intact; a crash after it loses nothing. The faiss file records the generation it covers
and is brought up to date (or rebuilt) from the features whenever it is behind.
Ids are SQLite ``AUTOINCREMENT`` keys: stable, never reused.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cbir.errors import CbirError, IndexDamagedError, IndexWriteError
from cbir.index import metadata, segments
from cbir.index.records import (
    _SCHEMA,
    NewImage,
    Touch,
    _schema,
    _text_factory,
    config_problem,
    write_error,
)
from cbir.utils import atomic_write_bytes, fsync_dir

SCHEMA_VERSION = 2
#: Older schemas this cbir upgrades in place when it opens an index with write access
#: (read-only, it reads them as they are): version -> function(conn) to the next version.
MIGRATIONS = {1: metadata.ensure_schema}  # 2: image_meta, meta_fields, image_text (FTS5)
#: np.load parses .npy headers with ast.literal_eval, and CPython's AST constructor is not
#: thread-safe (python/cpython#106905: a spurious SystemError): segment loads take turns.
_LOAD_LOCK = threading.Lock()
DB_NAME = "meta.sqlite"

__all__ = ["DB_NAME", "IndexStore", "NewImage", "Touch", "config_problem", "write_error"]


def _npy_bytes(a: np.ndarray, dtype: np.dtype) -> bytes:
    buf = io.BytesIO()
    np.save(buf, segments.as_stored(a, dtype), allow_pickle=False)
    return buf.getvalue()


class IndexStore:
    """An index directory. Open with :meth:`create` or :meth:`open`."""

    def __init__(self, root: Path, conn: sqlite3.Connection) -> None:
        self.root = root
        self.conn = conn
        self._segment_cache: dict[int, np.ndarray] = {}
        self._lock_fd: int | None = None
        #: True when the folder or database cannot be written (opened read-only), and why.
        self.read_only = False
        self.read_only_reason = ""

    # ----------------------------------------------------------------- opening
    @staticmethod
    def _connect(root: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(
            root / DB_NAME, timeout=60, isolation_level=None, check_same_thread=False
        )
        conn.row_factory = sqlite3.Row
        conn.text_factory = _text_factory(root / DB_NAME)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=60000")
        return conn

    @staticmethod
    def _connect_read_only(root: Path) -> sqlite3.Connection:
        """A read-only connection, for an index in a folder this process cannot write."""
        db = (root / DB_NAME).absolute()
        wal = root / f"{DB_NAME}-wal"
        # Without a pending journal the file is all there is: immutable needs no -shm file.
        immutable = not wal.exists() or wal.stat().st_size == 0
        uri = db.as_uri() + "?mode=ro" + ("&immutable=1" if immutable else "")
        conn = sqlite3.connect(
            uri, uri=True, timeout=60, isolation_level=None, check_same_thread=False
        )
        conn.row_factory = sqlite3.Row
        conn.text_factory = _text_factory(root / DB_NAME)
        return conn

    @classmethod
    def exists(cls, root: str | os.PathLike[str]) -> bool:
        return (Path(root) / DB_NAME).exists()

    @classmethod
    def create(cls, root: str | os.PathLike[str], config: dict[str, Any]) -> IndexStore:
        """Create a new, empty index at ``root`` recording ``config`` (model, index type)."""
        root = Path(root)
        if cls.exists(root):
            raise CbirError(f"{root}: an index already exists there")
        if root.exists() and not root.is_dir():
            raise CbirError(f"{root}: exists and is not a directory")
        # Built in a temp file and linked into place: a crash leaves no index or a whole one.
        tmp = root / f".{DB_NAME}.{os.getpid()}.tmp"
        try:
            root.mkdir(parents=True, exist_ok=True)
            for stale in (tmp, Path(f"{tmp}-journal")):  # left by a killed process of this pid
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(stale)
            with contextlib.closing(sqlite3.connect(tmp, isolation_level=None)) as conn:
                conn.executescript(_SCHEMA)
                conn.executescript(metadata.METADATA_DDL)
                for k, v in {
                    "schema": SCHEMA_VERSION,
                    "generation": 0,
                    "created": time.time(),
                    "config": config,
                    "faiss": None,
                }.items():
                    conn.execute("INSERT INTO meta(key, value) VALUES (?, ?)", (k, json.dumps(v)))
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            try:
                os.link(tmp, root / DB_NAME)  # fails if another process created one meanwhile
            except FileExistsError:
                raise
            except OSError:  # no hard links on this file system (FAT, some network shares)
                if cls.exists(root):
                    raise FileExistsError(root / DB_NAME) from None
                os.replace(tmp, root / DB_NAME)
            fsync_dir(root)
            conn = cls._connect(root)
        except FileExistsError:
            raise CbirError(f"{root}: an index already exists there") from None
        except (OSError, sqlite3.Error) as e:
            raise CbirError(f"{root}: cannot create the index ({e})") from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return cls(root, conn)

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> IndexStore:
        """Open an existing index; a clear error when there is none."""
        root = Path(root)
        if not cls.exists(root):
            raise CbirError(
                f"{root}: no cbir index here (create one with `cbir index IMAGES --index {root}`)"
            )
        why = ""
        if not (os.access(root, os.W_OK) and os.access(root / DB_NAME, os.W_OK)):
            why = (
                "the index folder or its database is not writable (read-only or permission denied)"
            )
        try:
            try:
                conn = cls._connect_read_only(root) if why else cls._connect(root)
                schema = _schema(conn)
            except sqlite3.OperationalError as e:
                if why:
                    raise
                # E.g. a full disk: SQLite cannot make its shared-memory file. Read without it.
                conn = cls._connect_read_only(root)
                schema = _schema(conn)
                full = shutil.disk_usage(root).free == 0
                why = (
                    os.strerror(errno.ENOSPC) if full else f"it cannot be opened for writing ({e})"
                )
        except (sqlite3.Error, TypeError, ValueError) as e:
            hint = (
                " (a read-only copy with a pending journal: open it once with write access)"
                if why
                else f"; run `cbir check {root}`, restore it from a backup or re-index"
            )
            raise CbirError(f"{root / DB_NAME}: not a readable cbir index ({e}){hint}") from None
        if schema != SCHEMA_VERSION and not (schema in MIGRATIONS and schema < SCHEMA_VERSION):
            raise CbirError(f"{root}: index schema {schema}, this cbir reads {SCHEMA_VERSION}")
        store = cls(root, conn)
        if schema != SCHEMA_VERSION and not why:
            try:
                store._migrate()
            except IndexWriteError as e:  # e.g. a full disk: read the old schema as it is
                why = str(e)
        store.read_only = bool(why)
        store.read_only_reason = why
        return store

    def _migrate(self) -> None:
        """Upgrade an older schema in place, one transaction per step."""
        while (schema := _schema(self.conn)) != SCHEMA_VERSION:
            with self.transaction() as c:
                if _schema(c) != schema:  # another process migrated meanwhile
                    continue
                MIGRATIONS[schema](c)
                self._set_meta("schema", schema + 1)

    def close(self) -> None:
        self.unlock()
        self.conn.close()

    # ------------------------------------------------------------------ meta
    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        try:
            return default if row is None else json.loads(row[0])
        except ValueError as e:
            raise IndexDamagedError(self.root / DB_NAME, f"meta {key!r} is not JSON: {e}") from None

    def _set_meta(self, key: str, value: Any) -> None:
        self.conn.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (key, json.dumps(value)),
        )

    def set_meta(self, key: str, value: Any) -> None:
        """Set one meta value in its own transaction."""
        with self.transaction():
            self._set_meta(key, value)

    @property
    def config(self) -> dict[str, Any]:
        """The stored model and index settings; IndexDamagedError when they are unusable."""
        config = self.get_meta("config")
        problem = config_problem(config)
        if problem:
            raise IndexDamagedError(self.root / DB_NAME, problem)
        return config

    @property
    def feature_dtype(self) -> np.dtype:
        """The dtype of this index's feature segments (float32 or float16)."""
        return segments.config_dtype(self.config)

    @property
    def generation(self) -> int:
        return int(self.get_meta("generation", 0))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error).

        SQLite failing to write (full disk, read-only file) raises IndexWriteError.
        """
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self.conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as e:
            raise write_error(self.root, e, "commit") from None

    # ---------------------------------------------------------------- locking
    def lock(self) -> None:
        """Take the writer lock (one writer at a time); readers never wait for it."""
        if self._lock_fd is not None:
            return
        if self.read_only:
            raise IndexWriteError(f"{self.root}: cannot write the index: {self.read_only_reason}")
        try:
            fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise write_error(self.root, e, "take the writer lock") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CbirError(
                f"{self.root}: another cbir process is writing this index; wait for it"
            ) from None
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # ---------------------------------------------------------------- reading
    def count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM images").fetchone()[0])

    def rows(self, ids: Sequence[int] | None = None) -> list[sqlite3.Row]:
        """Image rows by id (in the order given), or all rows by id."""
        if ids is None:
            return list(self.conn.execute("SELECT * FROM images ORDER BY id"))
        out: dict[int, sqlite3.Row] = {}
        ids = [int(i) for i in ids]
        for start in range(0, len(ids), 900):
            chunk = ids[start : start + 900]
            q = f"SELECT * FROM images WHERE id IN ({','.join('?' * len(chunk))})"
            for r in self.conn.execute(q, chunk):
                out[r["id"]] = r
        return [out[i] for i in ids if i in out]

    def row(self, id_: int) -> sqlite3.Row | None:
        rows = self.rows([id_])
        return rows[0] if rows else None

    def row_by_path(self, path: str) -> sqlite3.Row | None:
        return self.conn.execute("SELECT * FROM images WHERE path=?", (path,)).fetchone()

    def rows_under(self, prefix: str) -> dict[str, sqlite3.Row]:
        """Rows whose path is ``prefix`` or lies under the folder ``prefix``."""
        pre = prefix.rstrip(os.sep) + os.sep
        rows = self.conn.execute(
            "SELECT * FROM images WHERE path = ? OR substr(path, 1, ?) = ?",
            (prefix, len(pre), pre),
        )
        return {r["path"]: r for r in rows}

    def ids_by_sha(self, sha: str) -> list[int]:
        return [r[0] for r in self.conn.execute("SELECT id FROM images WHERE sha256=?", (sha,))]

    def _segment(self, gen: int) -> np.ndarray:
        seg = self._segment_cache.get(gen)
        if seg is None:
            path = self.root / f"features-{gen:08d}.npy"
            try:
                with _LOAD_LOCK:
                    seg = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise CbirError(
                    f"{path}: feature segment unreadable ({e}); run `cbir repair {self.root}`"
                ) from None
            dim, want = self.config["feature_dim"], self.feature_dtype
            if seg.dtype != want or seg.ndim != 2 or seg.shape[1] != dim:
                raise CbirError(
                    f"{path}: feature segment holds {seg.dtype} {seg.shape}, not {want} (n, {dim});"
                    f" run `cbir repair {self.root}`"
                )
            self._segment_cache[gen] = seg
        return seg

    def features(self, ids: Sequence[int]) -> np.ndarray:
        """Backbone features of ``ids`` (in that order), float32."""
        rows = self.rows(ids)
        if len(rows) != len(ids):
            known = {r["id"] for r in rows}
            missing = [i for i in ids if int(i) not in known]
            raise CbirError(f"unknown image id(s): {missing[:5]}")
        if not rows:
            return np.zeros((0, self.config["feature_dim"]), np.float32)
        out = np.empty((len(rows), self._segment(rows[0]["seg"]).shape[1]), np.float32)
        for i, r in enumerate(rows):
            seg = self._segment(r["seg"])
            if not 0 <= r["row"] < len(seg):
                raise CbirError(
                    f"{self.root}: image {r['id']}'s features lie outside their segment"
                    f" ({len(seg)} rows); run `cbir repair {self.root}`"
                )
            out[i] = seg[r["row"]]
        return out

    def iter_features(
        self, where: str = "", args: Sequence[Any] = ()
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, float32 features) per segment in blocks of at most
        ``segments.BLOCK_ROWS`` rows, for all live rows (optionally filtered)."""
        cond = f" AND {where}" if where else ""
        for (gen,) in self.conn.execute("SELECT gen FROM segments ORDER BY gen").fetchall():
            rows = self.conn.execute(
                f"SELECT id, row FROM images WHERE seg=?{cond} ORDER BY row", (gen, *args)
            ).fetchall()
            if not rows:
                continue
            ids = np.array([r[0] for r in rows], np.int64)
            idx = np.array([r[1] for r in rows], np.int64)
            seg = self._segment(gen)
            if idx[0] < 0 or idx[-1] >= len(seg):
                raise CbirError(
                    f"{self.root}: rows point outside segment {gen} ({len(seg)} rows);"
                    f" run `cbir repair {self.root}`"
                )
            for a in range(0, len(idx), segments.BLOCK_ROWS):
                b = a + segments.BLOCK_ROWS
                yield ids[a:b], np.asarray(seg[idx[a:b]], np.float32)

    # ---------------------------------------------------------------- writing
    def commit(
        self,
        added: Sequence[NewImage] = (),
        features: np.ndarray | None = None,
        touched: Sequence[Touch] = (),
        deleted: Sequence[int] = (),
        sidecars: Mapping[int, dict[str, Any]] | None = None,
    ) -> dict[str, list[int]]:
        """Commit one batch of changes atomically; returns the ids added/replaced/deleted.

        ``added[i]`` goes with ``features[i]``. An ``added`` path that is already indexed
        keeps its id and gets the new vector. ``sidecars``: new sidecar fields of images
        already indexed (``{id: fields}``, ``{}`` clears them; see cbir.index.metadata).
        """
        gen = self.generation + 1
        seg_file = f"features-{gen:08d}.npy"
        wrote = False
        if added:
            if features is None or len(features) != len(added):
                raise ValueError("commit: one feature row per added image")
            try:
                atomic_write_bytes(self.root / seg_file, _npy_bytes(features, self.feature_dtype))
            except OSError as e:
                raise write_error(self.root, e, f"write {seg_file}") from None
            wrote = True
        now = time.time()
        result: dict[str, list[int]] = {"added": [], "replaced": [], "deleted": []}
        try:
            with self.transaction() as c:
                if self.generation != gen - 1:
                    raise CbirError(f"{self.root}: changed by another writer during this commit")
                for i, im in enumerate(added):
                    old = c.execute("SELECT id FROM images WHERE path=?", (im.path,)).fetchone()
                    vals = (
                        im.sha256,
                        im.size,
                        im.mtime_ns,
                        im.width,
                        im.height,
                        im.tags,
                        json.dumps(im.extra),
                        gen,
                        i,
                        gen,
                    )
                    if old is None:
                        cur = c.execute(
                            "INSERT INTO images(sha256, size, mtime_ns, width, height, tags, extra,"
                            " seg, row, vgen, path, added) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                            (*vals, im.path, now),
                        )
                        result["added"].append(int(cur.lastrowid))
                        id_new = int(cur.lastrowid)
                    else:
                        c.execute(
                            "UPDATE images SET sha256=?, size=?, mtime_ns=?, width=?, height=?, tags=?,"
                            " extra=?, seg=?, row=?, vgen=? WHERE id=?",
                            (*vals, old[0]),
                        )
                        result["replaced"].append(int(old[0]))
                        id_new = int(old[0])
                    if im.meta is not None:
                        metadata.write_meta(
                            c, id_new, im.meta.get("sidecar", {}), im.meta.get("exif", {})
                        )
                    elif im.tags or old is not None:
                        metadata.refresh_text(c, id_new)
                for t in touched:
                    c.execute(
                        "UPDATE images SET size=?, mtime_ns=?, path=COALESCE(?, path) WHERE id=?",
                        (t.size, t.mtime_ns, t.path, t.id),
                    )
                for id_, fields in (sidecars or {}).items():
                    if c.execute("SELECT 1 FROM images WHERE id=?", (int(id_),)).fetchone():
                        metadata.write_meta(c, int(id_), sidecar=fields)
                for id_ in deleted:
                    if c.execute("DELETE FROM images WHERE id=?", (int(id_),)).rowcount:
                        result["deleted"].append(int(id_))
                if wrote:
                    c.execute(
                        "INSERT INTO segments(gen, file, n) VALUES (?, ?, ?)",
                        (gen, seg_file, len(added)),
                    )
                self._set_meta("generation", gen)
        except BaseException:
            if wrote:
                with contextlib.suppress(OSError):
                    os.unlink(self.root / seg_file)
            raise
        return result

    def delete(self, ids: Sequence[int]) -> list[int]:
        """Delete images by id (one commit); returns the ids that existed."""
        return self.commit(deleted=ids)["deleted"]

    def set_tags(self, id_: int, tags: str) -> None:
        with self.transaction() as c:
            c.execute("UPDATE images SET tags=? WHERE id=?", (tags, int(id_)))
            metadata.refresh_text(c, int(id_))

    def compact(self, force: bool = False) -> bool:
        """Merge segments into one when many rows are dead or segments are many."""
        segs = self.conn.execute("SELECT gen, n FROM segments").fetchall()
        total = sum(s[1] for s in segs)
        live = self.count()
        if not force and len(segs) <= 16 and (total == 0 or live / total >= 0.5):
            return False
        gen = self.generation + 1
        seg_file = f"features-{gen:08d}.npy"
        ids_parts: list[np.ndarray] = []

        def blocks() -> Iterator[np.ndarray]:  # streamed: never every feature in memory
            for part_ids, feats in self.iter_features():
                ids_parts.append(part_ids)
                yield feats

        if live:
            try:
                dim = self.config["feature_dim"]
                segments.write_segment(
                    self.root / seg_file, blocks(), live, dim, self.feature_dtype
                )
            except OSError as e:
                raise write_error(self.root, e, f"write {seg_file}") from None
        ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int64)
        try:
            with self.transaction() as c:
                c.executemany(
                    "UPDATE images SET seg=?, row=? WHERE id=?",
                    [(gen, i, int(id_)) for i, id_ in enumerate(ids)],
                )
                c.execute("DELETE FROM segments")
                if len(ids):
                    c.execute(
                        "INSERT INTO segments(gen, file, n) VALUES (?, ?, ?)",
                        (gen, seg_file, len(ids)),
                    )
                self._set_meta("generation", gen)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(self.root / seg_file)
            raise
        self._segment_cache.clear()
        self.cleanup()
        return True

    def cleanup(self) -> None:
        """Drop empty segments and delete files that no committed state refers to (best effort)."""
        try:
            with self.transaction() as c:
                c.execute("DELETE FROM segments WHERE gen NOT IN (SELECT DISTINCT seg FROM images)")
        except IndexWriteError:
            return
        keep = {r[0] for r in self.conn.execute("SELECT file FROM segments")}
        fa = self.get_meta("faiss") or {}
        keep |= {fa.get("file"), fa.get("previous")}
        for p in self.root.iterdir():
            if (
                p.name.startswith(("features-", "index-", ".features-", ".index-", f".{DB_NAME}."))
                and p.name not in keep
            ):
                with contextlib.suppress(OSError):
                    if p.name.startswith(".") and time.time() - p.stat().st_mtime < 3600:
                        continue  # a temp file another writer may still be writing
                    p.unlink()
                    gen = p.stem.split("-")[-1]
                    self._segment_cache.pop(int(gen) if gen.isdigit() else -1, None)

    # -------------------------------------------------------------- feedback
    def add_feedback(self, query: str, result_id: int, relevant: bool) -> int:
        with self.transaction() as c:
            cur = c.execute(
                "INSERT INTO feedback(query, result_id, relevant, created) VALUES (?,?,?,?)",
                (query, int(result_id), int(bool(relevant)), time.time()),
            )
            return int(cur.lastrowid)

    def feedback(self) -> list[sqlite3.Row]:
        return list(self.conn.execute("SELECT * FROM feedback ORDER BY id"))

    # ------------------------------------------------------------------ info
    def size_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.root.iterdir() if p.is_file())

"""The process the crash trials kill: one cbir write job that reports as it goes.

Run as ``python -m cbir_testing.reliability.driver JOB ...``. After every commit that returned,
it prints one JSON line (and flushes), so the parent knows which commits finished
before the kill. With ``--die-at N`` it kills itself with SIGKILL just before its N-th
write step (a file rename, unlink or fsync, an SQL statement that writes, an SQLite
COMMIT, or just after one):
kills that land inside short operations such as compaction, at every step in turn.
The final line ``{"ev": "done", "steps": S}`` says how many steps a full run has.

Jobs:
    index IMAGES INDEX   ``index_folder`` with small commits (``--commit-every``)
    delete INDEX IDS     ``cbir.ops.delete_ids`` in chunks (``--chunk``)
    add INDEX FILES      ``cbir.ops.add_image_bytes`` for each file (as an upload)
    compact INDEX        compaction of all segments, then the search index refresh
    read INDEX QUERY     searches in a loop until ``--stop`` exists (prints each answer)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_steps = 0
_die_at = 0


def emit(obj: dict[str, Any]) -> None:
    """One JSON line on stdout, flushed."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _step(name: str) -> None:
    global _steps
    _steps += 1
    if _steps == _die_at:
        os.kill(os.getpid(), signal.SIGKILL)


def _sql_step(statement: str) -> None:
    """Each statement that writes is a step (the kill lands before it runs)."""
    if statement.lstrip()[:6].upper() in _WRITES:
        _step("sql")


_WRITES = {"INSERT", "UPDATE", "DELETE", "CREATE", "COMMIT", "BEGIN "}


def instrument(die_at: int) -> None:
    """Count write steps (and die at step ``die_at``); report each finished commit."""
    global _die_at
    _die_at = die_at
    from cbir.index.store import IndexStore

    for name in ("replace", "rename", "unlink", "fsync"):
        orig = getattr(os, name)

        def hooked(*a: Any, _orig: Any = orig, _name: str = name, **k: Any) -> Any:
            _step(_name)
            out = _orig(*a, **k)
            _step(_name + "-done")
            return out

        setattr(os, name, hooked)

    orig_connect = sqlite3.connect

    def connect(*a: Any, **k: Any) -> sqlite3.Connection:
        conn = orig_connect(*a, **k)
        conn.set_trace_callback(_sql_step)
        return conn

    sqlite3.connect = connect  # type: ignore[assignment]

    orig_tx = IndexStore.transaction

    @contextlib.contextmanager
    def transaction(self: IndexStore) -> Iterator[Any]:
        with orig_tx(self) as c:
            yield c
            _step("before-commit")  # killed here: the transaction never commits
        _step("after-commit")

    IndexStore.transaction = transaction  # type: ignore[method-assign]

    orig_commit = IndexStore.commit

    def commit(
        self: IndexStore,
        added: Any = (),
        features: Any = None,
        touched: Any = (),
        deleted: Any = (),
        **kw: Any,
    ) -> Any:
        res = orig_commit(self, added, features, touched, deleted, **kw)
        emit(
            {
                "ev": "commit",
                "gen": self.generation,
                "added": [[a.path, a.sha256] for a in added],
                "ids": res["added"] + res["replaced"],
                "deleted": res["deleted"],
            }
        )
        return res

    IndexStore.commit = commit  # type: ignore[method-assign]

    orig_compact = IndexStore.compact

    def compact(self: IndexStore, force: bool = False) -> bool:
        emit({"ev": "compact-start"})
        done = orig_compact(self, force)
        emit({"ev": "compact-done", "compacted": done, "gen": self.generation})
        return done

    IndexStore.compact = compact  # type: ignore[method-assign]


def job_index(args: argparse.Namespace) -> None:
    from cbir.pipeline import index_folder

    s = index_folder(
        args.images,
        args.index,
        commit_every=args.commit_every,
        batch_size=args.batch_size,
        size=args.size,
        workers=1,
        progress=False,
    )
    emit({"ev": "summary", "indexed": s.indexed, "total": s.total, "failed": len(s.failed)})


def job_delete(args: argparse.Namespace) -> None:
    from cbir.ops import delete_ids

    ids = [int(i) for i in args.ids.split(",") if i]
    for start in range(0, len(ids), args.chunk):
        chunk = ids[start : start + args.chunk]
        emit({"ev": "delete-start", "ids": chunk})
        delete_ids(args.index, chunk)
        emit({"ev": "delete-done", "ids": chunk})


def job_add(args: argparse.Namespace) -> None:
    from cbir.ops import add_image_bytes

    for f in args.files:
        added = add_image_bytes(args.index, Path(f).read_bytes(), Path(f).name)
        emit({"ev": "added", "id": added.id, "created": added.created})


def job_compact(args: argparse.Namespace) -> None:
    from cbir.index import vector_index
    from cbir.index.store import IndexStore

    store = IndexStore.open(args.index)
    try:
        store.lock()
        store.compact(force=True)
        vector_index.refresh(store)
    finally:
        store.close()


def job_read(args: argparse.Namespace) -> None:
    """Search in a loop; print the ids of each answer (or the error)."""
    from cbir.search.searcher import Searcher

    searcher = Searcher(args.index)
    query = Path(args.query).read_bytes()
    feats = searcher.embed_bytes(query)
    emit({"ev": "ready"})
    stop = Path(args.stop)
    n = 0
    try:
        while not stop.exists() and (args.max <= 0 or n < args.max):
            try:
                hits = searcher.search_features(feats, args.k)[0]
                emit({"ev": "answer", "ids": sorted(h.id for h in hits)})
            except Exception as e:  # reported, counted as a failure by the parent
                emit({"ev": "error", "error": f"{type(e).__name__}: {e}"})
            n += 1
            time.sleep(args.pause)
    finally:
        searcher.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cbir_testing.reliability.driver")
    p.add_argument(
        "--die-at", type=int, default=0, help="SIGKILL self at this write step (0: never)"
    )
    sub = p.add_subparsers(dest="job", required=True)
    sp = sub.add_parser("index")
    sp.add_argument("images")
    sp.add_argument("index")
    sp.add_argument("--commit-every", type=int, default=4)
    sp.add_argument("--batch-size", type=int, default=4)
    sp.add_argument("--size", type=int, default=64)
    sp = sub.add_parser("delete")
    sp.add_argument("index")
    sp.add_argument("ids", help="comma-separated ids")
    sp.add_argument("--chunk", type=int, default=2)
    sp = sub.add_parser("add")
    sp.add_argument("index")
    sp.add_argument("files", nargs="+")
    sp = sub.add_parser("compact")
    sp.add_argument("index")
    sp = sub.add_parser("read")
    sp.add_argument("index")
    sp.add_argument("query")
    sp.add_argument("--stop", required=True, help="stop when this file exists")
    sp.add_argument("--k", type=int, default=1000)
    sp.add_argument("--max", type=int, default=0, help="at most this many searches (0: no limit)")
    sp.add_argument("--pause", type=float, default=0.002, help="seconds between searches")
    args = p.parse_args(argv)
    if args.job != "read":
        instrument(args.die_at)
    emit({"ev": "start"})
    jobs = {
        "index": job_index,
        "delete": job_delete,
        "add": job_add,
        "compact": job_compact,
        "read": job_read,
    }
    jobs[args.job](args)
    emit({"ev": "done", "steps": _steps})
    return 0


if __name__ == "__main__":
    sys.exit(main())

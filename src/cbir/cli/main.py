"""The ``cbir`` command line: thin, each subcommand one pipeline stage.

Each module of :mod:`cbir.cli` adds its subcommands with ``register(add)``, where
``add(name, func, help) -> ArgumentParser``. Errors a user can act on print one line
(``cbir: error: ...``) and exit 1; never a traceback.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from cbir import __version__
from cbir.cli import (
    calibrate,
    check,
    evaluate,
    index,
    info,
    joint,
    repair,
    search,
    serve,
    shard,
    train,
)
from cbir.cli.common import AddCommand, HelpFormatter, one_line, resolve_index
from cbir.errors import CbirError, IndexDamagedError

#: Who adds subcommands, in help order: index, prune, search, info, datasets, evaluate,
#: protocols, train, plot, describe, serve, calibrate, shard, check, repair.
REGISTER: tuple[Callable[[AddCommand], None], ...] = (
    index.register,
    search.register,
    info.register,
    evaluate.register,
    train.register,
    joint.register,
    serve.register,
    calibrate.register,
    shard.register,
    check.register,
    repair.register,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``cbir`` parser with every subcommand; ``args.func(args)`` runs the one chosen."""
    p = argparse.ArgumentParser(
        prog="cbir",
        description="Content-based image retrieval on one CPU machine.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"cbir {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, func: Callable[[argparse.Namespace], int], help_: str
    ) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_, formatter_class=HelpFormatter)
        sp.set_defaults(func=func)
        return sp

    for register in REGISTER:
        register(add)
    return p


def _database_error(args: argparse.Namespace, e: sqlite3.DatabaseError) -> CbirError:
    """A one-line error for a SQLite failure that escaped the store, naming its file."""
    index = getattr(args, "index", None) or getattr(args, "index_dir", None)
    db = Path(index, "meta.sqlite") if isinstance(index, str) else "the index database"
    if isinstance(e, sqlite3.OperationalError):  # locked, I/O: not damage
        return CbirError(f"{db}: SQLite: {e}; try again, or run `cbir check {index or 'INDEX'}`")
    return IndexDamagedError(db, str(e))


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cbir`` with ``argv`` (default: ``sys.argv[1:]``); the exit status."""
    for stream in (sys.stdout, sys.stderr):  # file names that are not UTF-8 print escaped
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        resolve_index(args)  # INDEX or --index INDEX
        return int(args.func(args) or 0)
    except CbirError as e:
        print(f"cbir: error: {one_line(str(e))}", file=sys.stderr)
        return 1
    except sqlite3.DatabaseError as e:  # SQLite found the index database damaged (or busy)
        print(f"cbir: error: {one_line(str(_database_error(args, e)))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cbir: interrupted; everything committed so far is kept", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())

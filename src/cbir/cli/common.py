"""Helpers shared by the ``cbir`` subcommands: JSON output, sizes, one-line errors, and
the naming rules every subcommand follows (issue 18 item 5):

- The index a command works on is its first positional argument ``INDEX``, or
  ``--index INDEX`` (either works: :func:`add_index_argument`). ``cbir index`` takes the
  images first, so there the index comes second or as ``--index``.
- ``--model`` is always a model: a ``cbir train`` run directory (or checkpoint), or
  ``frozen`` for the backbone alone; never an index (``cbir describe --index`` for that).
- ``--json`` prints what the command printed as JSON; ``--*-limit N`` evaluates or trains on
  a random subset of N; ``--workers`` is processes (``cbir serve``), threads are
  ``--*-threads`` (``--decode-threads``, ``--embed-threads``).
- An old spelling stays as a hidden alias (:func:`add_alias`); every ``--help`` shows the
  defaults (:class:`HelpFormatter`).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from cbir.errors import CbirError

#: ``add(name, func, help) -> ArgumentParser``: how a module adds its subcommands.
AddCommand = Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter that appends ``(default: X)`` to an option's help, unless the
    default is unset (None, False, empty) or the help text already speaks of it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or default in (None, False, argparse.SUPPRESS)
            or default == []
            or "default" in text
            or "%(default)" in text
        ):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


def add_alias(sp: argparse.ArgumentParser, old: str, dest: str, **kwargs: Any) -> None:
    """Keep the old spelling ``old`` of an option working, hidden from ``--help``."""
    sp.add_argument(old, dest=dest, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kwargs)


#: The attribute naming where an ``INDEX`` positional lands (see :func:`resolve_index`).
_INDEX_DEST = "_index_dest"


def add_index_argument(
    sp: argparse.ArgumentParser,
    dest: str = "index_dir",
    help_: str = "index directory (made by `cbir index`)",
    shift: str | None = None,
) -> None:
    """The index as the positional ``INDEX`` or as ``--index INDEX`` (either, not both).

    ``shift``: the optional positional after INDEX (``cbir search``'s QUERY); with
    ``--index`` given, the one positional is that one.
    """
    sp.add_argument(dest, nargs="?", default=None, metavar="INDEX", help=help_)
    sp.add_argument(
        "--index", dest="_index_option", default=None, metavar="INDEX", help=f"or: {help_}"
    )
    sp.set_defaults(**{_INDEX_DEST: (dest, shift)})


def resolve_index(args: argparse.Namespace) -> str | None:
    """Put ``--index`` or the positional INDEX into ``args.<dest>``; an error naming the fix
    (:class:`CbirError`) when neither or both are given. None for commands without one."""
    spec = getattr(args, _INDEX_DEST, None)
    if spec is None:
        return None
    dest, shift = spec
    pos, opt = getattr(args, dest), args._index_option
    if opt is not None and pos is not None:
        if shift is None or getattr(args, shift) is not None:
            raise CbirError(f"the index is given twice ({pos!r} and --index {opt!r}); give one")
        setattr(args, shift, pos)
        pos = None
    if pos is None and opt is None:
        raise CbirError(
            f"give the index directory: `cbir {args.command} INDEX ...` or --index INDEX"
        )
    setattr(args, dest, pos if pos is not None else opt)
    return getattr(args, dest)


def print_json(obj: Any) -> None:
    """Print ``obj`` as indented JSON (anything unknown as ``str``)."""
    print(json.dumps(obj, indent=2, default=str))


def human_bytes(n: float) -> str:
    """``n`` bytes as B, KiB, MiB, GiB or TiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n}"


def one_line(text: str) -> str:
    """``text`` on one line (a path may hold a newline)."""
    return text.replace("\r", "\\r").replace("\n", "\\n")

"""Helpers shared by the ``cbir`` subcommands: JSON output, sizes, one-line errors."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

#: ``add(name, func, help) -> ArgumentParser``: how a module adds its subcommands.
AddCommand = Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]


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

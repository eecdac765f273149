"""The command line's place in the tree: all argparse under ``cbir/cli/``, the library
usable from Python without it (issue 14)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import cbir
from cbir.cli.main import build_parser
from cbir.distributed.engine import engine_for
from cbir.errors import CbirError

SRC = Path(cbir.__file__).resolve().parent
CLI = SRC / "cli"


def library_files() -> list[Path]:
    """Every source file of cbir outside ``cli/``."""
    return [p for p in sorted(SRC.rglob("*.py")) if CLI not in p.parents]


def test_only_cli_mentions_argparse():
    offenders = [
        str(p.relative_to(SRC)) for p in library_files() if "argparse" in p.read_text("utf-8")
    ]
    assert len(library_files()) > 50 and offenders == []


def _imports(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_library_does_not_import_the_cli():
    offenders = {
        str(p.relative_to(SRC)): sorted(
            n
            for n in _imports(ast.parse(p.read_text("utf-8")))
            if n == "cbir.cli" or n.startswith("cbir.cli.")
        )
        for p in library_files()
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_every_subcommand_in_help_order():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert list(sub.choices) == [
        "index",
        "prune",
        "search",
        "info",
        "datasets",
        "evaluate",
        "protocols",
        "train",
        "plot",
        "describe",
        "serve",
        "calibrate",
        "shard",
        "check",
        "repair",
    ]


def test_engine_for_takes_plain_arguments():
    with engine_for() as engine, engine_for("local") as same:
        assert engine is None and same is None
    with pytest.raises(CbirError, match="--ray-address needs --engine ray"):
        with engine_for("local", ray_address="127.0.0.1:6379"):
            pass

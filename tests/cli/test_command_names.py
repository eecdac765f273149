"""Every ``cbir WORD`` a message or docstring of cbir names is a real subcommand.

Issue 16 item 5: ``cbir rebuild`` was suggested (pipeline.create_or_open) and never existed.
A command is named in code quoting: ```cbir WORD``` or ````cbir WORD````, or after "run" /
"use" / "try" / "with"; an upper-case WORD is a placeholder (``cbir ARGS``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import cbir
from cbir.cli.main import build_parser

SRC = Path(cbir.__file__).parent
NAMED = re.compile(r"(?:`|\b(?:run|use|try|with|see) )cbir ([a-z][a-z0-9_-]*)")


def subcommands() -> set[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return set(sub.choices)


def named_commands(text: str) -> list[str]:
    """The subcommand words ``text`` names."""
    return NAMED.findall(text)


def test_the_pattern_finds_commands_and_skips_prose():
    text = "run `cbir check IDX`, see ``cbir plot RUN``; the cbir index holds; `cbir ARGS`"
    assert named_commands(text) == ["check", "plot"]
    assert named_commands("use another --index directory (or `cbir rebuild`)") == ["rebuild"]


def test_every_named_command_exists():
    known = subcommands()
    wrong: list[str] = []
    seen = 0
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for word in named_commands(node.value):
                    seen += 1
                    if word not in known:
                        rel = path.relative_to(SRC.parent)
                        wrong.append(f"{rel}:{node.lineno}: `cbir {word}`")
    assert seen > 20  # the scan reads the messages (they do name commands)
    assert wrong == [], f"commands that do not exist (subcommands: {sorted(known)})"

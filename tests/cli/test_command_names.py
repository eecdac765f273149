"""Every ``cbir WORD`` that cbir's messages, docstrings and docs name is a real subcommand.

Issue 16 item 5: ``cbir rebuild`` was suggested (pipeline.create_or_open) and never existed.
In code, a command is named in code quoting (```cbir WORD```, ````cbir WORD````) or after
"run" / "use" / "try" / "with" / "see"; in the docs also as a line of a code block. An
upper-case WORD is a placeholder (``cbir ARGS``); prose ("the cbir index") is not a name.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import cbir
from cbir.cli.main import build_parser

SRC = Path(cbir.__file__).parent.parent  # src/: cbir and cbir_testing
REPO = SRC.parent
NAMED = re.compile(r"(?:`|\b(?:run|use|try|with|see) )cbir ([a-z][a-z0-9_-]*)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
CODE_LINE = re.compile(r"^\s*(?:\$ )?cbir ([a-z][a-z0-9_-]*)", re.M)


def subcommands() -> set[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return set(sub.choices)


def named_commands(text: str) -> list[str]:
    """The subcommand words ``text`` (a string of the code) names."""
    return NAMED.findall(text)


def documented_commands(markdown: str) -> list[str]:
    """The subcommand words a Markdown page names (inline code, code-block lines)."""
    words = named_commands(markdown)
    for block in FENCE.findall(markdown):
        words += CODE_LINE.findall(block)
    return words


def test_the_patterns_find_commands_and_skip_prose():
    text = "run `cbir check IDX`, see ``cbir plot RUN``; the cbir index holds; `cbir ARGS`"
    assert named_commands(text) == ["check", "plot"]
    assert named_commands("use another --index directory (or `cbir rebuild`)") == ["rebuild"]
    page = "cbir is a tool.\n\n```\ncbir index a/ --index b\n$ cbir rebuild b\n```\n"
    assert documented_commands(page) == ["index", "rebuild"]


def test_every_command_the_code_names_exists():
    known = subcommands()
    wrong: list[str] = []
    seen = 0
    for path in sorted(SRC.glob("cbir*/**/*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for word in named_commands(node.value):
                    seen += 1
                    if word not in known:
                        rel = path.relative_to(SRC)
                        wrong.append(f"{rel}:{node.lineno}: `cbir {word}`")
    assert seen > 20  # the scan reads the messages (they do name commands)
    assert wrong == [], f"commands that do not exist (subcommands: {sorted(known)})"


def test_every_command_the_docs_name_exists():
    known = subcommands()
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    wrong = [
        f"{page.relative_to(REPO)}: `cbir {word}`"
        for page in pages
        if page.exists()
        for word in documented_commands(page.read_text(encoding="utf-8"))
        if word not in known
    ]
    assert wrong == [], f"commands that do not exist (subcommands: {sorted(known)})"

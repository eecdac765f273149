"""The runtime package ``cbir`` needs no test dependency, and never imports the test tools
(``cbir_testing``): the harness lives outside it."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
#: Packages only the test extras install (``pip install 'cbir[test]'``).
TEST_ONLY = ("hypothesis", "httpx", "selenium", "fastapi.testclient", "skimage", "pytest")

#: Run with ``python -c``: refuse every test-only package, then import the runtime modules.
BLOCKED_IMPORT = """
import importlib.abc, json, sys
BLOCKED = {blocked!r}
refused = []

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            refused.append(name)
            raise ImportError(f"{{name}} is a test dependency", name=name)
        return None

for b in BLOCKED:
    for m in [m for m in sys.modules if m == b or m.startswith(b + ".")]:
        del sys.modules[m]
sys.meta_path.insert(0, Block())
import cbir, cbir.search.searcher, cbir.service.app, cbir.cli
try:
    cbir.cli.main(["--help"])
except SystemExit as e:
    code = e.code
loaded = sorted(m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in BLOCKED))
print(json.dumps({{"code": code, "loaded": loaded, "refused": refused}}))
"""


def test_cbir_imports_without_the_test_dependencies():
    code = BLOCKED_IMPORT.format(blocked=TEST_ONLY)
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    out = json.loads(lines[-1])
    assert out["code"] == 0 and out["loaded"] == []
    # the help lists every subcommand: none was dropped for want of a test dependency
    commands = set(re.findall(r"^ {4}([a-z][a-z-]*)", "\n".join(lines[:-1]), re.M))
    assert {"index", "search", "serve", "check", "evaluate", "train"} <= commands, commands


def test_the_blocker_refuses_what_it_should():
    """The check above can fail: importing a test tool under the same blocker does."""
    code = BLOCKED_IMPORT.format(blocked=TEST_ONLY).replace(
        "import cbir, cbir.search.searcher, cbir.service.app, cbir.cli",
        "import cbir.cli, cbir_testing.loadgen; cbir_testing.loadgen.upload_request(b'')",
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert r.returncode != 0 and "httpx is a test dependency" in r.stderr


def _imported_names(tree: ast.AST) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.append(node.value)  # importlib.import_module("...") and plugin lists
    return names


def test_no_cbir_module_imports_the_test_tools():
    offenders = []
    files = sorted((SRC / "cbir").rglob("*.py"))
    assert len(files) > 50
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for name in _imported_names(tree):
            if name == "cbir_testing" or name.startswith("cbir_testing."):
                offenders.append(f"{path.relative_to(SRC)}: {name}")
    assert not offenders, offenders

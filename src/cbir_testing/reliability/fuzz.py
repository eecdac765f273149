"""Malformed inputs, generated with hypothesis, through every door images come in by.

Inputs are made from real photos (encoded small as JPEG, PNG, GIF, WebP, BMP, TIFF):
truncated and bit-flipped files, overwritten bytes, zero-byte files, huge declared
dimensions, decompression bombs (pixel floods and a zTXt text bomb), text and random
bytes named as images, a valid image under another format's name (it must work), and
file-system oddities: symlink loops, dangling links, unreadable files, FIFOs and folders
named as images, names that are not UTF-8, hold a newline, start with ``-`` or are 255
bytes long.

The doors and what each must do with every input (never crash, never hang past
:data:`BOUND_S`, a clear error naming the file and the reason for each bad one):

- ``cbir index FOLDER --json`` (a subprocess per chunk of inputs): exit 0, every input
  whose name or content claims an image is either indexed or listed as failed with a
  known reason;
- ``cbir search INDEX FILE`` (each input on its own, in a worker process that the bound
  restarts): results, or a one-line error (JSON ``error`` + ``reason`` with ``--json``);
- ``POST /images`` and ``POST /search`` (FastAPI TestClient): 200/201 for an image,
  else a 4xx JSON error with a known ``reason``; never a 5xx.

The ``cbir`` subprocesses print with a strict UTF-8 stdout (as in a UTF-8 locale) and,
as root, run without CAP_DAC_OVERRIDE so that unreadable files are unreadable.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cbir_testing.reliability.faults import drop_dac
from cbir_testing.reliability.fuzz_inputs import (
    CONTENT_KINDS,
    NOT_IMAGE_KINDS,
    FuzzInput,
    bases,
    claims_image,
    generate,
    materialize,
)
from cbir_testing.reliability.report import Outcome

#: A single input may take this long at any door; longer is a hang.
BOUND_S = 60.0
#: Reasons cbir gives for a bad image (ImageError reasons, plus the file-system ones).
REASONS = frozenset(
    {
        "empty",
        "too-large",
        "not-an-image",
        "unsupported-format",
        "corrupt",
        "truncated",
        "bomb",
        "unreadable",
        "missing",
        "bad-name",
    }
)


# -------------------------------------------------------------------- doors
def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONIOENCODING": "utf-8:strict", "LC_ALL": "C.UTF-8"}


def _clear_json_error(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj.get("error")) and obj.get("reason") in REASONS


def index_door(
    inputs: list[FuzzInput], workdir: Path, size: int = 64, chunk: int = 100
) -> list[tuple[FuzzInput | None, str]]:
    """Run ``cbir index`` over the inputs (a folder per chunk); returns (input, problem) pairs."""
    problems: list[tuple[FuzzInput | None, str]] = []
    for c in range(0, len(inputs), chunk):
        part = inputs[c : c + chunk]
        folder = workdir / f"index-chunk-{c // chunk:03d}"
        folder.mkdir(parents=True)
        paths = [materialize(x, folder, c + i) for i, x in enumerate(part)]
        good = [
            folder / "control-a.jpg",
            folder / "control-b.png",
        ]  # so that a run always finds images
        good[0].write_bytes(bases()["JPEG"][0])
        good[1].write_bytes(bases()["PNG"][1])
        index = workdir / f"index-chunk-{c // chunk:03d}.idx"
        try:
            r = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "cbir.cli",
                    "index",
                    str(folder),
                    "--index",
                    str(index),
                    "--size",
                    str(size),
                    "--decode-threads",
                    "1",
                    "--json",
                ],
                capture_output=True,
                timeout=BOUND_S * 3,
                env=_env(),
                preexec_fn=drop_dac,
            )
        except subprocess.TimeoutExpired:
            problems.append(
                (None, f"cbir index hung on chunk {c // chunk} (over {BOUND_S * 3:.0f} s)")
            )
            continue
        err = r.stderr.decode("utf-8", "replace")
        if r.returncode != 0 or "Traceback" in err:
            problems.append(
                (
                    None,
                    f"cbir index exit {r.returncode} on chunk {c // chunk}: {err.strip()[-300:]}",
                )
            )
            continue
        try:
            summary = json.loads(r.stdout)
        except ValueError:
            problems.append((None, f"cbir index printed no JSON: {r.stdout[-200:]!r}"))
            continue
        failed = {f["path"]: f for f in summary["failed"]}
        from cbir.index.store import IndexStore

        store = IndexStore.open(index)
        try:
            indexed = {r["path"] for r in store.rows()}
        finally:
            store.close()
        for x, p in zip(part, paths, strict=True):
            if not claims_image(p):
                continue
            shown = p.decode("utf-8", "backslashreplace")
            key = os.fsdecode(p)
            f = failed.get(key) or failed.get(shown)
            if key in indexed:
                if x.kind in NOT_IMAGE_KINDS:
                    problems.append((x, "indexed, but it is not a readable image"))
            elif f is None:
                problems.append((x, "neither indexed nor reported as failed"))
            elif f.get("reason") not in REASONS or not f.get("path"):
                problems.append((x, f"failed without a known reason: {f}"))
        shutil.rmtree(folder, ignore_errors=True)
    return problems


class _SearchWorker:
    """A process that runs ``cbir search INDEX PATH`` (the CLI's main) per line of input."""

    def __init__(self, index: Path) -> None:
        code = (
            "import io, json, sys, contextlib\n"
            "from cbir.cli import main\n"
            "for line in sys.stdin:\n"
            "    req = json.loads(line)\n"
            "    path = bytes.fromhex(req['path']).decode('utf-8', 'surrogateescape')\n"
            "    out = io.TextIOWrapper(io.BytesIO(), encoding='utf-8', errors='strict')\n"
            "    err = io.TextIOWrapper(io.BytesIO(), encoding='utf-8', errors='strict')\n"
            "    try:\n"
            "        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):\n"
            "            rc = main(['search', sys.argv[1], path, '-k', '3'] + (['--json'] if req['json'] else []))\n"
            "        exc = ''\n"
            "    except BaseException as e:\n"
            "        rc, exc = -1, f'{type(e).__name__}: {e}'\n"
            "    for s in (out, err):\n"
            "        try:\n"
            "            s.flush()\n"
            "        except BaseException as e:\n"
            "            rc, exc = -1, f'{type(e).__name__} while printing: {e}'\n"
            "    res = {'rc': rc, 'exc': exc, 'out': out.buffer.getvalue().decode('utf-8', 'replace'),\n"
            "           'err': err.buffer.getvalue().decode('utf-8', 'replace')}\n"
            "    sys.__stdout__.write(json.dumps(res) + '\\n')\n"
            "    sys.__stdout__.flush()\n"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, str(index)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=_env(),
            preexec_fn=drop_dac,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.put(line)
        self.lines.put("")

    def ask(self, path: bytes, as_json: bool, timeout: float) -> dict[str, Any] | None:
        """The result for one query, or None when it took longer than ``timeout``."""
        self.proc.stdin.write(json.dumps({"path": path.hex(), "json": as_json}) + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            return None
        return (
            json.loads(line)
            if line
            else {"rc": -9, "exc": "the worker process died", "out": "", "err": ""}
        )

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def search_door(
    inputs: list[FuzzInput], index: Path, workdir: Path
) -> list[tuple[FuzzInput | None, str]]:
    """``cbir search INDEX FILE`` for each input (text and --json alternately)."""
    folder = workdir / "search-inputs"
    folder.mkdir(parents=True)
    problems: list[tuple[FuzzInput | None, str]] = []
    worker = _SearchWorker(index)
    try:
        for i, x in enumerate(inputs):
            path = materialize(x, folder, i)
            as_json = i % 2 == 0
            res = worker.ask(path, as_json, BOUND_S)
            if res is None:
                problems.append((x, f"hung (over {BOUND_S:.0f} s)"))
                worker.close()
                worker = _SearchWorker(index)
                continue
            why = _search_problem(x, res, as_json)
            if why:
                problems.append((x, why))
            if res["rc"] == -9:
                worker.close()
                worker = _SearchWorker(index)
    finally:
        worker.close()
        shutil.rmtree(folder, ignore_errors=True)
    return problems


def _search_problem(x: FuzzInput, res: dict[str, Any], as_json: bool) -> str | None:
    if res["exc"]:
        return f"crashed: {res['exc'][:200]}"
    rc, out, err = res["rc"], res["out"], res["err"]
    if rc == 0:
        if x.kind in NOT_IMAGE_KINDS:
            return "results for something that is not a readable image"
        return None
    if rc != 1:
        return f"exit {rc}"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if lines and all(ln.startswith("cbir: error: ") for ln in lines) and len(lines) == 1:
        return None
    if as_json:
        try:
            obj = json.loads(out)
        except ValueError:
            return f"no JSON and no one-line error: {out[-200:]!r} {err[-200:]!r}"
        if _clear_json_error(obj):
            return None
        return f"unclear JSON error: {str(obj)[:200]}"
    return f"no one-line error: {err[-200:]!r}"


@dataclass
class UploadDoor:
    """``POST /images`` and ``POST /search`` of an in-process app (TestClient)."""

    index: Path
    key: str = "reliability-key-0123456789"
    client: Any = field(init=False)

    def __post_init__(self) -> None:
        from fastapi.testclient import TestClient

        from cbir.service.app import create_app

        self.client = TestClient(
            create_app(self.index, api_key=self.key, allowed_hosts=["testserver"]),
            raise_server_exceptions=False,
        )

    def _post(self, url: str, name: str, content: bytes, **kw: Any) -> tuple[int, Any] | None:
        box: list[Any] = []

        def go() -> None:
            r = self.client.post(url, files={"file": (name, content)}, **kw)
            try:
                box.append((r.status_code, r.json()))
            except ValueError:
                box.append((r.status_code, r.text[:200]))

        t = threading.Thread(target=go, daemon=True)
        t.start()
        t.join(BOUND_S)
        return box[0] if box else None

    def check(self, x: FuzzInput) -> list[str]:
        """Problems with this input at both endpoints (empty: all clear)."""
        name = x.name.decode("utf-8", "replace") or "upload"
        out = []
        results = {}
        for url, kw in (
            ("/search", {"data": {"k": "3"}}),
            ("/images", {"headers": {"X-API-Key": self.key}}),
        ):
            res = self._post(url, name, x.data, **kw)
            if res is None:
                out.append(f"POST {url} hung (over {BOUND_S:.0f} s)")
                continue
            status, body = res
            results[url] = status
            if status in (200, 201):
                if x.kind in ("zero-byte", "text"):
                    out.append(f"POST {url} accepted something that is not an image")
            elif not (400 <= status < 500 and _clear_json_error(body)):
                out.append(f"POST {url}: HTTP {status} {str(body)[:200]}")
        if len(results) == 2 and (results["/search"] == 200) != (results["/images"] in (200, 201)):
            out.append(f"/search and /images disagree: {results}")
        return out

    def close(self) -> None:
        self.client.close()


# ------------------------------------------------------------------- the run
@dataclass
class FuzzResult:
    """Problems found per door (each a (input, problem) pair), and the inputs tried."""

    inputs: list[FuzzInput]
    index: list[tuple[FuzzInput | None, str]] = field(default_factory=list)
    search: list[tuple[FuzzInput | None, str]] = field(default_factory=list)
    upload: list[tuple[FuzzInput | None, str]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def outcomes(self, door: str) -> list[Outcome]:
        """One outcome per input tried at ``door`` (failed where a problem was found)."""
        probs = getattr(self, door)
        tried = [x for x in self.inputs if door != "upload" or x.kind in CONTENT_KINDS]
        by_input: dict[int, list[str]] = {}
        for x, why in probs:
            by_input.setdefault(id(x), []).append(why)
        outs = [Outcome(note=x.kind) for x in tried]
        for o, x in zip(outs, tried, strict=True):
            for why in by_input.pop(id(x), []):
                o.fail(f"{x.describe()}: {why}")
        for whys in by_input.values():  # problems not tied to one input (a whole run)
            o = Outcome()
            for why in whys:
                o.fail(why)
            outs.append(o)
        return outs


def run_fuzz(n: int, workdir: Path, index: Path, seed: int = 0) -> FuzzResult:
    """Generate ``n`` inputs and put each through the three doors.

    ``index``: an index to search and upload to (it is copied first; uploads add to it).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    res = FuzzResult(generate(n, seed))
    t0 = time.perf_counter()
    res.index = index_door(res.inputs, workdir / "index")
    res.seconds["index"] = time.perf_counter() - t0
    search_index = workdir / "search.idx"
    shutil.copytree(index, search_index)
    t0 = time.perf_counter()
    res.search = search_door(res.inputs, search_index, workdir / "search")
    res.seconds["search"] = time.perf_counter() - t0
    upload_index = workdir / "upload.idx"
    shutil.copytree(index, upload_index)
    t0 = time.perf_counter()
    door = UploadDoor(upload_index)
    try:
        for x in res.inputs:
            if x.kind in CONTENT_KINDS:
                res.upload += [(x, why) for why in door.check(x)]
    finally:
        door.close()
    res.seconds["upload"] = time.perf_counter() - t0
    return res

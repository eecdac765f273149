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
import stat
import struct
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from cbir.reliability.corpus import encode, photos
from cbir.reliability.faults import drop_dac
from cbir.reliability.report import Outcome

#: A single input may take this long at any door; longer is a hang.
BOUND_S = 60.0
#: Reasons cbir gives for a bad image (ImageError reasons, plus the file-system ones).
REASONS = frozenset({
    "empty", "too-large", "not-an-image", "unsupported-format", "corrupt", "truncated",
    "bomb", "unreadable", "missing", "bad-name",
})  # fmt: skip
FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
SUFFIX = {
    "JPEG": ".jpg",
    "PNG": ".png",
    "GIF": ".gif",
    "WEBP": ".webp",
    "BMP": ".bmp",
    "TIFF": ".tif",
}
#: Kinds that are files with content (they also go through the upload endpoint).
CONTENT_KINDS = (
    "valid", "valid-renamed", "truncated", "bitflip", "overwrite", "zero-byte", "huge-dims",
    "bomb", "text", "random-bytes", "wrong-magic",
)  # fmt: skip
#: Kinds that are file-system oddities (``cbir index`` and ``cbir search`` only).
FS_KINDS = ("symlink-loop", "dangling-link", "unreadable", "fifo", "folder")
#: Kinds that can never yield an image: indexing or searching one must fail with a reason.
NOT_IMAGE_KINDS = frozenset({"zero-byte", "text", *FS_KINDS})


@dataclass
class FuzzInput:
    """One generated input: ``name`` is the file name in bytes (it may not be UTF-8)."""

    kind: str
    name: bytes
    data: bytes = b""
    fmt: str = ""

    def describe(self) -> str:
        return f"{self.kind} {self.fmt} {self.name!r} ({len(self.data)} bytes)"


# ------------------------------------------------------------------- makers
@lru_cache(maxsize=1)
def bases() -> dict[str, list[bytes]]:
    """Small real photos encoded in each format (the material inputs are made from)."""
    out: dict[str, list[bytes]] = {f: [] for f in FORMATS}
    for i, img in enumerate(photos()[:6]):
        small = img.copy()
        small.thumbnail((64 + 16 * i, 64 + 16 * i))
        for fmt in FORMATS:
            kw = {"quality": 80} if fmt in ("JPEG", "WEBP") else {}
            out[fmt].append(encode(small, fmt, **kw))
    return out


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def set_dims(data: bytes, fmt: str, w: int, h: int) -> bytes:
    """``data`` with its header claiming ``w`` x ``h`` pixels (fields clipped to their width)."""
    b = bytearray(data)
    if fmt == "PNG" and b[12:16] == b"IHDR":
        b[16:24] = struct.pack(">II", w, h)
        b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])))
    elif fmt == "GIF":
        b[6:10] = struct.pack("<HH", min(w, 65535), min(h, 65535))
        i = b.find(b"\x2c", 13)
        if i > 0 and i + 9 <= len(b):
            b[i + 5 : i + 9] = struct.pack("<HH", min(w, 65535), min(h, 65535))
    elif fmt == "JPEG":
        for marker in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2"):
            i = b.find(marker)
            if i > 0:
                b[i + 5 : i + 9] = struct.pack(">HH", min(h, 65535), min(w, 65535))
                break
    elif fmt == "WEBP":
        i = b.find(b"\x9d\x01\x2a")
        if i > 0:
            b[i + 3 : i + 7] = struct.pack("<HH", min(w, 16383), min(h, 16383))
    elif fmt == "BMP":
        b[18:26] = struct.pack("<ii", min(w, 2**31 - 1), min(h, 2**31 - 1))
    elif fmt == "TIFF" and b[:2] == b"II":
        # ImageWidth (256) and ImageLength (257) entries of the first IFD, SHORT or LONG
        ifd = struct.unpack_from("<I", b, 4)[0]
        n = struct.unpack_from("<H", b, ifd)[0] if ifd + 2 <= len(b) else 0
        for k in range(n):
            e = ifd + 2 + 12 * k
            tag, typ = struct.unpack_from("<HH", b, e)
            if tag in (256, 257):
                v = w if tag == 256 else h
                if typ == 3:
                    struct.pack_into("<H", b, e + 8, min(v, 65535))
                else:
                    struct.pack_into("<I", b, e + 8, min(v, 2**32 - 1))
    return bytes(b)


def png_flood(w: int, h: int, rows_present: int | None = None) -> bytes:
    """A small, valid 1-bit PNG of ``w`` x ``h`` pixels (zero rows compress ~1000:1)."""
    row = b"\x00" + b"\x00" * ((w + 7) // 8)
    n = h if rows_present is None else rows_present
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(n)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


@lru_cache(maxsize=1)
def png_text_bomb() -> bytes:
    """A small PNG with a zTXt chunk that inflates to 64 MiB."""
    good = bases()["PNG"][0]
    text = zlib.compress(b"\0" * (64 << 20), 9)
    ztxt = _png_chunk(b"zTXt", b"comment\0\0" + text)
    return good[:33] + ztxt + good[33:]


def strategy() -> Any:
    """The hypothesis strategy of :class:`FuzzInput`."""
    from hypothesis import strategies as st

    name_stem = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=12)
    odd_names = st.sampled_from(
        [b"", b"\xff\xfe", b"caf\xe9", b"\x80x", b"line\nbreak", b"-k", b"\xed\xa0\x80"]
    )
    suffixes = st.sampled_from(
        [".jpg", ".jpeg", ".JPG", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".jpe", ""]
    )

    @st.composite
    def names(draw: Any, suffix: str | None = None) -> bytes:
        stem = draw(name_stem).encode()
        odd = draw(odd_names) if draw(st.integers(0, 3)) == 2 else b""
        suf = (suffix if suffix is not None else draw(suffixes)).encode()
        if draw(st.integers(0, 30)) == 13:  # the longest name a Linux file system takes
            return (stem + odd + b"L" * 255)[: 255 - len(suf)] + suf
        return (odd + stem if draw(st.booleans()) else stem + odd) + suf

    @st.composite
    def inputs(draw: Any) -> FuzzInput:
        kind = draw(st.sampled_from(CONTENT_KINDS + FS_KINDS))
        fmt = draw(st.sampled_from(FORMATS))
        base = draw(st.sampled_from(bases()[fmt]))
        data = base
        if kind == "valid-renamed":
            other = draw(st.sampled_from([f for f in FORMATS if f != fmt]))
            return FuzzInput(kind, draw(names(SUFFIX[other])), base, fmt)
        if kind == "truncated":
            data = base[: draw(st.integers(1, len(base) - 1))]
        elif kind == "bitflip":
            b = bytearray(base)
            for _ in range(draw(st.integers(1, 24))):
                pos = draw(st.integers(0, len(b) - 1))
                b[pos] ^= 1 << draw(st.integers(0, 7))
            data = bytes(b)
        elif kind == "overwrite":
            start = draw(st.integers(0, len(base) - 1))
            junk = draw(st.binary(min_size=1, max_size=64))
            data = base[:start] + junk + base[start + len(junk) :]
        elif kind == "zero-byte":
            data = b""
        elif kind == "huge-dims":
            w = draw(st.integers(1, 1 << 20))
            h = draw(st.integers(1, 1 << 20))
            data = set_dims(base, fmt, w, h)
        elif kind == "bomb":
            which = draw(
                st.sampled_from(["flood-over", "flood-over", "text", "flood-near", "flood-cut"])
            )
            fmt = "PNG"
            if which == "flood-over":
                data = png_flood(
                    draw(st.integers(9000, 60000)), draw(st.integers(9000, 60000)), rows_present=16
                )
            elif which == "text":
                data = png_text_bomb()
            elif which == "flood-near":  # just under the pixel limit: decodes, in bounded time
                data = png_flood(7800, 7800)
            else:  # declares a flood, holds a few rows
                data = png_flood(6000, 6000, rows_present=draw(st.integers(0, 200)))
        elif kind == "text":
            data = draw(st.text(min_size=1, max_size=400)).encode("utf-8", "surrogatepass")
        elif kind == "random-bytes":
            data = draw(st.binary(min_size=1, max_size=2048))
        elif kind == "wrong-magic":
            other = draw(st.sampled_from([f for f in FORMATS if f != fmt]))
            magic = bases()[other][0][:12]
            data = magic + base[len(magic) :]
        elif kind in FS_KINDS:
            data = base if kind == "unreadable" else b""
            return FuzzInput(kind, draw(names(SUFFIX[fmt])), data, fmt)
        suffix = SUFFIX[fmt] if kind != "text" else draw(st.sampled_from([".jpg", ".png", ".gif"]))
        name = draw(names(suffix)) if draw(st.integers(0, 4)) else draw(names())
        return FuzzInput(kind, name, data, fmt)

    return inputs()


def generate(n: int, seed: int = 0) -> list[FuzzInput]:
    """``n`` inputs drawn by hypothesis (deterministic for a ``seed``)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed

    out: list[FuzzInput] = []

    @hseed(seed)
    @settings(
        max_examples=n, database=None, deadline=None, phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    @given(strategy())
    def collect(x: FuzzInput) -> None:
        out.append(x)

    collect()
    return out[:n]


def materialize(x: FuzzInput, folder: Path, i: int) -> bytes:
    """Create ``x`` in ``folder`` (made unique by ``i``); returns its path as bytes."""
    name = x.name or b"noname"
    stem, dot, suf = name.rpartition(b".")
    name = (stem + b"-%d." % i + suf) if dot and stem else name + b"-%d" % i
    name = name[-255:] if len(name) > 255 else name
    path = os.fsencode(folder) + b"/" + name.replace(b"/", b"_")
    if x.kind == "symlink-loop":
        other = os.fsencode(folder) + b"/loop-partner-%d" % i
        os.symlink(other, path)
        os.symlink(path, other)
    elif x.kind == "dangling-link":
        os.symlink(b"/nonexistent/cbir-fuzz/" + name, path)
    elif x.kind == "fifo":
        os.mkfifo(path)
    elif x.kind == "folder":
        os.mkdir(path)
        (Path(os.fsdecode(path)) / "inside.txt").write_text("a folder named like an image")
    else:
        with open(path, "wb") as f:
            f.write(x.data)
        if x.kind == "unreadable":
            os.chmod(path, 0)
    return path


def _claims_image(path: bytes) -> bool:
    """Whether ``cbir index`` must account for this entry (name or content says image)."""
    from cbir.data.images import IMAGE_SUFFIXES, sniff_file

    p = Path(os.fsdecode(path))
    if p.is_dir() and not p.is_symlink():
        return False
    if p.suffix.lower() in IMAGE_SUFFIXES:
        return True
    try:
        return stat.S_ISREG(os.stat(path).st_mode) and sniff_file(p) is not None
    except OSError:
        return False


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
                [sys.executable, "-m", "cbir.cli", "index", str(folder), "--index", str(index),
                 "--size", str(size), "--workers", "1", "--json"],
                capture_output=True, timeout=BOUND_S * 3, env=_env(), preexec_fn=drop_dac,
            )  # fmt: skip
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
            if not _claims_image(p):
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
            [sys.executable, "-c", code, str(index)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True, env=_env(), preexec_fn=drop_dac,
        )  # fmt: skip
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
            create_app(self.index, api_key=self.key), raise_server_exceptions=False
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

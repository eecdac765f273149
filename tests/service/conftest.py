"""Fixtures for the service tests: a small real index, writable copies, a live server."""

from __future__ import annotations

import contextlib
import io
import shutil
import struct
import subprocess
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbir.pipeline import index_folder
from cbir_testing.loadgen import ServerProcess

KEY = "test-key-0123456789abcdef"
#: The host names the tests' in-process clients send (TestClient's "testserver").
TEST_HOSTS = ["testserver"]


@pytest.fixture(scope="session")
def base_index(tmp_path_factory: pytest.TempPathFactory, photos_dir: Path) -> Path:
    """An index of the 13 real photos (read-only: copy it to change it)."""
    idx = tmp_path_factory.mktemp("service") / "index"
    index_folder(photos_dir, idx, progress=False)
    return idx


@pytest.fixture
def index_copy(base_index: Path, tmp_path: Path) -> Path:
    """A private, writable copy of :func:`base_index` (its rows point at the shared photos)."""
    dst = tmp_path / "index"
    shutil.copytree(base_index, dst)
    return dst


def photo(photos_dir: Path, name: str) -> Path:
    """The file of one named photo in :func:`photos_dir`."""
    return next(p for p in photos_dir.rglob("*") if p.stem == name)


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def flipped(path: Path, fmt: str = "PNG") -> bytes:
    """A mirrored copy of a photo: new content, close to the original."""
    return encode(Image.open(path).convert("RGB").transpose(Image.FLIP_LEFT_RIGHT), fmt)


def noise_png(side: int, seed: int = 0) -> bytes:
    """A PNG of uniform noise (incompressible: about 3 * side**2 bytes)."""
    a = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    return encode(Image.fromarray(a))


def png_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A valid, tiny PNG that claims ``width x height`` pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    idat = zlib.compress(b"\x00" * (1 << 16), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@contextlib.contextmanager
def live_server(app) -> Iterator[str]:
    """Run ``app`` on uvicorn in a thread on a free loopback port; yields its base URL."""
    import uvicorn

    from cbir.cli.serve import bind

    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if server.started:
                break
            threading.Event().wait(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@contextlib.contextmanager
def serve_process(index: Path, *extra: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run `cbir serve INDEX --port 0 ...` in a subprocess; yields (base URL, process).

    The server must start, and exit with status 0 when stopped (SIGINT)."""
    with ServerProcess(index, *extra, startup_timeout_s=300) as srv:
        assert srv.proc is not None
        yield srv.url, srv.proc
    assert srv.proc.returncode == 0, srv.stderr()


@contextlib.contextmanager
def serve_subprocess(index: Path, *extra: str) -> Iterator[str]:
    """Run `cbir serve INDEX --port 0 ...` in a subprocess; yields its base URL."""
    with serve_process(index, *extra) as (url, _):
        yield url

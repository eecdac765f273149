"""Issue 16's memory attack: a 7.9 KB PNG that decodes to 8000x8000 pixels (1-bit, with a
transparent colour) sent to ``POST /search``, eight at once. Each used to cost the server
about 600 MiB (the decoded image, then full-size RGBA and RGB copies); eight in parallel
took it from 1.3 to 2.7 GiB. Uploads are now decoded a few at a time, and shrunk band by
band as they are converted, so the server's peak memory grows by a bounded amount.
"""

from __future__ import annotations

import struct
import threading
import zlib
from pathlib import Path

import httpx
import pytest

from cbir.service.service import DEFAULT_DECODE_SLOTS
from tests.service.conftest import photo, serve_process

SIDE = 8000
MiB = 1 << 20
#: Peak RSS growth allowed for 8 parallel attack uploads: per decode slot the 1-byte-a-pixel
#: decoded image (61 MiB) and its bands, plus 100 MiB for everything else.
BOUND = DEFAULT_DECODE_SLOTS * 80 * MiB + 100 * MiB


def transparent_bitmap_png(side: int = SIDE) -> bytes:
    """A valid PNG of ``side x side`` 1-bit pixels, all the transparent colour (tRNS)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" + b"\x00" * ((side + 7) // 8)  # filter byte, then the bits
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
        + chunk(b"tRNS", struct.pack(">H", 0))
        + chunk(b"IDAT", zlib.compress(row * side, 9))
        + chunk(b"IEND", b"")
    )


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_eight_tiny_huge_pngs_in_parallel_keep_the_server_memory_bounded(base_index, photos_dir):
    bomb = transparent_bitmap_png()
    assert len(bomb) < 10_000
    with serve_process(base_index) as (url, proc), httpx.Client(base_url=url, timeout=300) as c:
        warm = c.post("/search", files={"file": ("w.jpg", photo(photos_dir, "horse").read_bytes())})
        assert warm.status_code == 200
        before = _kib(proc.pid, "VmRSS")
        Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        statuses: list[int] = []

        def send() -> None:
            with httpx.Client(base_url=url, timeout=300) as cc:
                r = cc.post("/search", files={"file": ("b.png", bomb)}, data={"k": "3"})
                statuses.append(r.status_code)

        threads = [threading.Thread(target=send) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        peak = _kib(proc.pid, "VmHWM")
    assert statuses == [200] * 8, statuses
    growth = peak - before
    print(f"RSS {before / MiB:.0f} MiB, peak {peak / MiB:.0f} MiB: +{growth / MiB:.0f} MiB")
    assert growth < BOUND, f"peak RSS grew by {growth / MiB:.0f} MiB (bound {BOUND / MiB:.0f})"

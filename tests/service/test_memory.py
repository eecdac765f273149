"""Issue 16's memory attack: a 7.9 KB PNG that decodes to 8000x8000 pixels (1-bit, with a
transparent colour) sent to ``POST /search``, eight at once. Each used to cost the server
about 600 MiB (the decoded image, then full-size RGBA and RGB copies); eight in parallel
took it from 1.3 to 2.7 GiB. Uploads are now decoded on a few threads, and shrunk band by
band as they are converted, so the server's peak memory grows by a bounded amount.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from cbir.service.service import DEFAULT_DECODE_SLOTS
from cbir_testing.reliability.attacks import peak_rss_growth, transparent_bitmap_png
from tests.service.conftest import photo, serve_process

MiB = 1 << 20
#: Peak RSS growth allowed for 8 parallel attack uploads: per decode thread the decoded
#: 1-byte-a-pixel image (61 MiB) and its bands, plus 100 MiB for everything else.
BOUND = DEFAULT_DECODE_SLOTS * 80 * MiB + 100 * MiB


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_eight_tiny_huge_pngs_in_parallel_keep_the_server_memory_bounded(base_index, photos_dir):
    bomb = transparent_bitmap_png()
    assert len(bomb) < 10_000
    with serve_process(base_index) as (url, proc), httpx.Client(base_url=url, timeout=300) as c:
        warm = c.post("/search", files={"file": ("w.jpg", photo(photos_dir, "horse").read_bytes())})
        assert warm.status_code == 200
        growth, statuses = peak_rss_growth(url, proc.pid, bomb, n=8)
    assert statuses == [200] * 8, statuses
    print(f"peak RSS +{growth / MiB:.0f} MiB (bound {BOUND / MiB:.0f} MiB)")
    assert growth < BOUND, f"peak RSS grew by {growth / MiB:.0f} MiB (bound {BOUND / MiB:.0f})"

"""Issue 16's attacks, as the reliability suite runs them: every row holds (0 failures)."""

from __future__ import annotations

from pathlib import Path

from cbir_testing.reliability.attacks import transparent_bitmap_png
from cbir_testing.reliability.suite import attack_tallies


def test_every_attack_of_issue_16_is_held(tmp_path: Path):
    lines: list[str] = []
    tallies = attack_tallies(tmp_path, lines.append)
    assert len(tallies) == 12 and all(t.trials >= 1 for t in tallies)
    bad = [(t.fault, t.details) for t in tallies if not t.ok]
    assert not bad, bad


def test_the_png_bomb_is_what_the_attack_sent():
    import io

    from PIL import Image

    data = transparent_bitmap_png()
    assert len(data) < 8200
    img = Image.open(io.BytesIO(data))
    assert img.size == (8000, 8000) and img.mode == "1" and "transparency" in img.info

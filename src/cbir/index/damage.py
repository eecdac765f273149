"""Which image rows have lost their stored features.

A row's features live at ``(seg, row)`` of the segment file ``features-<seg>.npy``. They are
lost when that file is gone, does not load (truncated, not a .npy), holds another shape than
the metadata records (another segment's file, another model), when the row points outside
it or shares its slot with another row, or (``values=True``) when the vector holds NaN or
infinity. ``cbir index`` re-embeds such rows from their files on disk and ``cbir repair``
does it for the whole index (:mod:`cbir.repair`); ``cbir check`` reports the same damage.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cbir.errors import CbirError
from cbir.index.store import IndexStore

#: Rows per block when the vectors are scanned for non-finite numbers.
_BLOCK = 65536


@dataclass(frozen=True)
class Damaged:
    """One row whose stored features are lost, and why."""

    id: int
    path: str
    sha256: str
    why: str


def segment_file(gen: int) -> str:
    """The file name readers load for segment ``gen`` (:meth:`IndexStore._segment`)."""
    return f"features-{gen:08d}.npy"


def _segment_problem(store: IndexStore, gen: int, n: int | None, dim: int) -> str | None:
    """Why segment ``gen`` cannot be read as ``(n, dim)`` of the index's dtype (None: it can)."""
    file = segment_file(gen)
    if n is None:
        return f"segment {gen} is not recorded in the metadata"
    try:
        arr = np.load(store.root / file, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        return f"{file} is missing"
    except (OSError, ValueError) as e:
        return f"{file} does not load ({e})"
    want = store.feature_dtype
    if arr.dtype != want or arr.shape != (n, dim):
        return f"{file} holds {arr.dtype} {arr.shape}, the metadata says {want} ({n}, {dim})"
    return None


def damaged_rows(store: IndexStore, *, values: bool = False) -> dict[int, Damaged]:
    """Rows whose stored features are lost, by id (empty when every row can be read).

    Args:
        store: an open index.
        values: also read every vector and count one holding NaN or infinity as lost
            (reads all features; without it only the segment files' headers are read).
    """
    dim = store.config["feature_dim"]
    segments = {
        int(g): int(n) for g, n in store.conn.execute("SELECT gen, n FROM segments").fetchall()
    }
    rows = store.conn.execute("SELECT id, path, sha256, seg, row FROM images").fetchall()
    slots = Counter((int(r["seg"]), int(r["row"])) for r in rows)
    by_seg: dict[int, list] = defaultdict(list)
    for r in rows:
        by_seg[int(r["seg"])].append(r)
    out: dict[int, Damaged] = {}

    def lose(r, why: str) -> None:
        out[int(r["id"])] = Damaged(int(r["id"]), r["path"], r["sha256"], why)

    for gen, seg_rows in by_seg.items():
        problem = _segment_problem(store, gen, segments.get(gen), dim)
        if problem:
            for r in seg_rows:
                lose(r, problem)
            continue
        n = segments[gen]
        fine = []
        for r in seg_rows:
            if not 0 <= r["row"] < n:
                lose(r, f"row {r['row']} is outside {segment_file(gen)} ({n} rows)")
            elif slots[(gen, int(r["row"]))] > 1:
                lose(r, f"row {r['row']} of {segment_file(gen)} is shared with another image")
            else:
                fine.append(r)
        if values and fine:
            arr = np.load(store.root / segment_file(gen), mmap_mode="r", allow_pickle=False)
            fine.sort(key=lambda r: r["row"])
            for start in range(0, len(fine), _BLOCK):
                block = fine[start : start + _BLOCK]
                vec = np.asarray(arr[[r["row"] for r in block]])
                for r, ok in zip(block, np.isfinite(vec).all(axis=1), strict=True):
                    if not ok:
                        lose(r, f"row {r['row']} of {segment_file(gen)} holds non-finite numbers")
    return out


def damaged_under(store: IndexStore, root: Path, under: Collection[int]) -> dict[int, Damaged]:
    """The damaged rows, all among ``under`` (the ids of the rows under the folder ``cbir
    index`` is indexing, which re-embeds them); damage elsewhere is refused before anything
    is written, naming ``cbir repair``, which re-embeds every row it can."""
    damaged = damaged_rows(store)
    outside = [d for d in damaged.values() if d.id not in under]
    if outside:
        shown = ", ".join(f"{d.path} (id {d.id})" for d in outside[:3])
        more = f" and {len(outside) - 3} more" if len(outside) > 3 else ""
        raise CbirError(
            f"{store.root}: {len(outside)} indexed image(s) outside {root} lost their stored"
            f" features ({outside[0].why}): {shown}{more}; nothing was indexed. Run"
            f" `cbir repair {store.root}` to re-embed them from their files"
        )
    return damaged

"""Feature segment files: their dtype (float32, or float16 at half the bytes) and writing.

An index records the dtype of its segments in its config (``feature_dtype``; absent means
float32, the only dtype of indexes made before the option existed). Readers convert rows
to float32 as they read them, so a float16 index searches like a float32 one; every
segment of one index has the index's dtype (a writer never mixes them).

float16 keeps 11 significant bits (a relative rounding error under 2**-11); what that
costs in retrieval quality is measured in docs/scaling.md. Segments are written
streaming (header, then blocks of rows), so merging segments never holds every feature
in memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from cbir.errors import CbirError
from cbir.utils import atomic_write

#: The dtypes a feature segment may have (``cbir index --feature-dtype``).
FEATURE_DTYPES = ("float32", "float16")
DEFAULT_DTYPE = "float32"
#: Rows per block when segments are read or written in pieces.
BLOCK_ROWS = 65536


def check_dtype_name(name: str | None) -> str | None:
    """``name`` if it is a feature dtype (or None), else a CbirError naming the choices."""
    if name is not None and name not in FEATURE_DTYPES:
        raise CbirError(f"--feature-dtype {name!r}: choose one of {', '.join(FEATURE_DTYPES)}")
    return name


def config_dtype(config: dict[str, Any]) -> np.dtype:
    """The segment dtype an index's config records (float32 when it records none)."""
    return np.dtype(config.get("feature_dtype", DEFAULT_DTYPE))


def refuse_other_dtype(store: Any, config: dict[str, Any], name: str | None) -> None:
    """Close ``store`` and raise when ``--feature-dtype name`` is not what it stores."""
    have = str(config_dtype(config))
    if name is not None and name != have:
        store.close()
        raise CbirError(
            f"{store.root} stores {have} features, not --feature-dtype {name}; leave the"
            " option out to update it, or index into another --index directory"
        )


def dtype_problem(config: dict[str, Any]) -> str | None:
    """Why ``config``'s feature_dtype is unusable (None: it is fine or absent)."""
    name = config.get("feature_dtype", DEFAULT_DTYPE)
    if name not in FEATURE_DTYPES:
        return f"meta 'config' has feature_dtype {name!r}, not one of {', '.join(FEATURE_DTYPES)}"
    return None


def as_stored(features: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``features`` in the segment dtype; CbirError where float16 cannot hold a value."""
    with np.errstate(over="ignore"):  # refused below, with the fix
        out = np.ascontiguousarray(features, dtype=dtype)
    if dtype != np.float32 and not np.isfinite(out).all() and np.isfinite(features).all():
        raise CbirError(
            f"features beyond the range of {dtype} (|x| > {np.finfo(dtype).max:g}); index them"
            " into a new --index with --feature-dtype float32"
        )
    return out


def write_segment(
    path: Path, blocks: Iterable[np.ndarray], n: int, dim: int, dtype: np.dtype
) -> None:
    """Write an ``(n, dim)`` .npy segment of ``dtype`` atomically from blocks of rows."""
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
        "fortran_order": False,
        "shape": (int(n), int(dim)),
    }

    def write(f: Any) -> None:
        np.lib.format.write_array_header_1_0(f, header)
        rows = 0
        for block in blocks:
            block = as_stored(block, dtype)
            if block.ndim != 2 or block.shape[1] != dim:
                raise ValueError(f"segment block of shape {block.shape}, expected (m, {dim})")
            f.write(block.tobytes())
            rows += len(block)
        if rows != n:
            raise ValueError(f"segment of {rows} rows written, {n} announced")

    atomic_write(path, write)

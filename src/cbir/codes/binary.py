"""Binary codes: packed bits in a Hamming index; score ``1 - hamming / bits``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from cbir.codes.base import CodeKind
from cbir.codes.bits import hamming, pack_bits
from cbir.errors import CbirError
from cbir.index.binary_index import load_binary_index, make_binary_index


class BinaryCodes(CodeKind):
    """Packed uint8 codes (faiss bit order) in a :mod:`cbir.index.binary_index` index
    (BFlat, MIH, BIVF, BHNSW). Search values are Hamming distances; the score of a hit is
    ``1 - distance / bits``."""

    name: ClassVar[str] = "binary"
    ext: ClassVar[str] = "bidx"
    width_option: ClassVar[str] = "bits"
    default_index_type: ClassVar[str] = "BFlat"
    exact_type: ClassVar[str] = "BFlat"
    metric: ClassVar[str] = "hamming"
    lower_is_better: ClassVar[bool] = True
    rerankable: ClassVar[bool] = False
    float_queries: ClassVar[bool] = False
    milvus_vector: ClassVar[str | None] = "BINARY_VECTOR"

    def describe(self, dim: int) -> str:
        return f"{dim} bits"

    def width(self, dim: int) -> int:
        return dim // 8

    def dtype(self) -> Any:
        return np.uint8

    def dim_of(self, codes: Any) -> int:
        return int(codes.shape[1]) * 8

    def check_rows(self, codes: Any, dim: int) -> np.ndarray:
        if dim <= 0 or dim % 8:
            raise CbirError(f"binary codes of {dim} bits: need a positive multiple of 8")
        v = np.ascontiguousarray(codes, dtype=np.uint8)
        if v.ndim != 2 or v.shape[1] * 8 != dim:
            raise CbirError(
                f"binary codes of shape {v.shape}: expected (n, {dim // 8}) packed uint8"
            )
        return v

    def encode(self, transform: Any, features: np.ndarray) -> np.ndarray:
        return pack_bits(transform.outputs(features))

    def scores(self, q: Any, db: Any, dim: int) -> np.ndarray:
        return 1.0 - hamming(q, db).astype(np.float64) / dim

    def to_scores(self, raw: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray | None]:
        return 1.0 - raw.astype(np.float64) / dim, raw

    def make(self, index_type: str, dim: int) -> Any:
        return make_binary_index(index_type, dim)

    def read(self, path: str | Path) -> Any:
        return load_binary_index(path)

    def shard_type(self, index_type: str) -> str:
        """Shards of binary codes are exact scans (BFlat), whatever the index uses."""
        return self.exact_type

    def clone(self, index: Any) -> Any:
        if _trained(index):
            raise CbirError(
                f"binary shards: index type {index.spec!r}; shards support BFlat, MIH and BHNSW"
            )
        return self.make(index.spec, index.bits)


def _trained(index: Any) -> bool:
    """An index whose training holds state (BIVF): it cannot be remade empty."""
    return str(index.spec).upper().startswith("BIVF")

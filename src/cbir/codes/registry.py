"""The registry of code kinds: ``code_kind(name)``; adding a kind is one file and one line."""

from __future__ import annotations

from typing import Any

from cbir.codes.base import CodeKind
from cbir.codes.binary import BinaryCodes
from cbir.codes.float import FloatCodes
from cbir.codes.sparse import SparseCodes
from cbir.codes.subic import SUBIC_KINDS
from cbir.errors import CbirError

#: Every code kind by name.
KINDS: dict[str, CodeKind] = {
    k.name: k for k in (FloatCodes(), BinaryCodes(), SparseCodes(), *SUBIC_KINDS)
}


def code_kind(name: Any) -> CodeKind:
    """The code kind named ``name``, or of a transform (its ``kind``)."""
    key = name if isinstance(name, str) else getattr(name, "kind", name)
    try:
        return KINDS[key]
    except KeyError:
        raise CbirError(f"unknown code kind {key!r}; known: {', '.join(sorted(KINDS))}") from None

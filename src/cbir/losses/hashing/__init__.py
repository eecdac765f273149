"""Deep supervised hashing losses, one paper per file, and binary-code helpers.

Every loss is a :class:`HashingLoss`: ``loss(u, labels, index=None)`` with ``u`` the
``(batch, bits)`` real-valued hash-layer output; codes are ``sign_codes(u)``.
"""

from __future__ import annotations

from typing import Any

from cbir.losses.hashing.base import HashingLoss, similarity
from cbir.losses.hashing.codes import hamming_distances, pack_codes, sign_codes, unpack_codes
from cbir.losses.hashing.csq import CSQ, hash_centers
from cbir.losses.hashing.dch import DCH
from cbir.losses.hashing.dlbhc import DLBHC, DLBHCHead
from cbir.losses.hashing.dpsh import DPSH
from cbir.losses.hashing.dsh import DSH
from cbir.losses.hashing.hashnet import HashNet
from cbir.losses.hashing.subic import SUBIC
from cbir.losses.hashing.triplet_tanh import TripletTanh

HASHING_LOSSES: dict[str, type[HashingLoss]] = {
    "dsh": DSH,
    "dpsh": DPSH,
    "hashnet": HashNet,
    "dch": DCH,
    "csq": CSQ,
    "triplet-tanh": TripletTanh,
    "dlbhc": DLBHC,
}


def get_hashing_loss(name: str, bits: int, n_classes: int | None = None, **kw: Any) -> HashingLoss:
    """Build the loss registered as ``name`` (see ``HASHING_LOSSES``) with its hyperparameters."""
    key = name.lower().replace("_", "-")
    if key not in HASHING_LOSSES:
        raise ValueError(f"unknown hashing loss {name!r}; known: {', '.join(HASHING_LOSSES)}")
    return HASHING_LOSSES[key](bits, n_classes, **kw)


__all__ = [
    "CSQ",
    "DCH",
    "DLBHC",
    "DLBHCHead",
    "DPSH",
    "DSH",
    "HASHING_LOSSES",
    "HashNet",
    "HashingLoss",
    "SUBIC",
    "TripletTanh",
    "get_hashing_loss",
    "hamming_distances",
    "hash_centers",
    "pack_codes",
    "sign_codes",
    "similarity",
    "unpack_codes",
]

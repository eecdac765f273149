"""Batch samplers for metric learning, by name (``cbir train --sampler NAME``).

``random`` and ``m-per-class`` (PML's ``MPerClassSampler``) are the usual ones; the
others are the sampling strategies of the MassImageRetrieval seed, one per file:
``exhaustive``, ``inverse-frequency`` (``inverse-frequency-max``: shares relative to the
most drawn sample, see :class:`InverseFrequencySampler`), ``loss-guided``,
``distance-guided``, ``cluster-anchors``. The seed's sixth strategy, the direction condition on triplets,
needs the batch's embeddings and is a miner: ``--miner direction`` (``direction-same``:
the seed's own same-side test; :class:`cbir.samplers.direction.DirectionMiner`).

``distance-guided`` and ``cluster-anchors`` lay their batches out as triplets
``(a, p, n, a, p, n, ...)``; ``--miner as-sampled`` trains on exactly those triplets,
any other miner mines within the batch as usual.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from cbir.errors import CbirError
from cbir.samplers.base import BatchSampler, MPerClassSampler, RandomSampler
from cbir.samplers.cluster_center import ClusterCenterSampler
from cbir.samplers.distance_guided import DistanceGuidedSampler
from cbir.samplers.exhaustive import ExhaustiveSampler
from cbir.samplers.inverse_frequency import InverseFrequencySampler
from cbir.samplers.loss_guided import LossGuidedSampler, per_sample_losses

SAMPLERS: dict[str, Callable[..., BatchSampler]] = {
    "random": RandomSampler,
    "m-per-class": MPerClassSampler,
    "exhaustive": ExhaustiveSampler,
    "inverse-frequency": InverseFrequencySampler,
    "inverse-frequency-max": partial(InverseFrequencySampler, share="max"),
    "loss-guided": LossGuidedSampler,
    "distance-guided": DistanceGuidedSampler,
    "cluster-anchors": ClusterCenterSampler,
}

TRIPLET_SAMPLERS = ("distance-guided", "cluster-anchors")


def make_sampler(
    name: str, labels: np.ndarray, batch_size: int, seed: int = 0, **options: Any
) -> BatchSampler:
    """The sampler registered as ``name`` over training ``labels``; ``options`` go to its
    constructor (``m``, and the strategy's own settings)."""
    key = name.lower().replace("_", "-")
    if key == "direction":
        raise CbirError(
            "direction is a triplet filter, not a sampler: use --miner direction (with any --sampler)"
        )
    if key not in SAMPLERS:
        raise CbirError(f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}")
    return SAMPLERS[key](labels, batch_size, seed=seed, **options)


__all__ = [
    "SAMPLERS",
    "TRIPLET_SAMPLERS",
    "BatchSampler",
    "ClusterCenterSampler",
    "DistanceGuidedSampler",
    "ExhaustiveSampler",
    "InverseFrequencySampler",
    "LossGuidedSampler",
    "MPerClassSampler",
    "RandomSampler",
    "make_sampler",
    "per_sample_losses",
]

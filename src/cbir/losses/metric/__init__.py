"""Deep metric learning losses and miners by name, on pytorch-metric-learning (PML).

Every loss is a PML loss: ``loss(embeddings, labels, indices_tuple=None) -> scalar``,
with PML's default distance (Euclidean on L2-normalised embeddings, or cosine
similarity) unless ``distance=`` is passed. Losses with proxies or a classifier own
parameters (``loss.parameters()`` go to the optimiser). Every miner is a PML miner:
``miner(embeddings, labels) -> indices_tuple``. Only center loss (:mod:`.center`), DAML
(:mod:`.daml`) and two trivial miners (:mod:`.miners`) are written here; the rest is PML, configured as in
its paper. ``DEFAULT_MINERS`` is each loss's usual miner (None: the loss uses every
pair / triplet / sample of the batch), as the benchmark runs it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from torch import nn

from cbir.errors import CbirError
from cbir.losses.metric.center import CenterLoss, SoftmaxCenterLoss
from cbir.losses.metric.daml import DAMLLoss
from cbir.losses.metric.miners import AllTripletsMiner, RandomTripletsMiner


def _contrastive(dim: int, n_classes: int, **kw: Any) -> nn.Module:
    """DrLIM (Hadsell, Chopra, LeCun, CVPR 2006), PML's hinge form on all pairs."""
    return pml_losses.ContrastiveLoss(**{"pos_margin": 0.0, "neg_margin": 1.0, **kw})


def _triplet(dim: int, n_classes: int, **kw: Any) -> nn.Module:
    """Triplet margin loss (Weinberger & Saul 2009; Schroff et al., FaceNet, CVPR 2015)."""
    return pml_losses.TripletMarginLoss(**{"margin": 0.1, **kw})


def _npair(dim: int, n_classes: int, **kw: Any) -> nn.Module:
    """Multi-class N-pair loss (Sohn, NeurIPS 2016): one positive pair per class."""
    return pml_losses.NPairsLoss(**kw)


def _margin(dim: int, n_classes: int, **kw: Any) -> nn.Module:
    """Margin loss with a learned per-class boundary beta (Wu et al., "Sampling Matters
    in Deep Embedding Learning", ICCV 2017); pair it with distance-weighted sampling."""
    kw = {"margin": 0.2, "nu": 0.0, "beta": 1.2, "learn_beta": True, "num_classes": n_classes, **kw}
    return pml_losses.MarginLoss(**kw)


def _center(dim: int, n_classes: int, **kw: Any) -> nn.Module:
    """Softmax + center loss (Wen et al., ECCV 2016), see :mod:`.center`."""
    return SoftmaxCenterLoss(n_classes, dim, **kw)


def _proxy_anchor(dim: int, n_classes: int, **kw: Any) -> nn.Module:
    """Proxy-Anchor (Kim, Kim, Cho, Kwak, CVPR 2020), margin 0.1, alpha 32."""
    return pml_losses.ProxyAnchorLoss(n_classes, dim, **{"margin": 0.1, "alpha": 32, **kw})


def _multi_similarity(dim: int, n_classes: int, **kw: Any) -> nn.Module:
    """Multi-Similarity loss (Wang et al., CVPR 2019), alpha 2, beta 50, base 0.5."""
    return pml_losses.MultiSimilarityLoss(**{"alpha": 2.0, "beta": 50.0, "base": 0.5, **kw})


def _arcface(dim: int, n_classes: int, **kw: Any) -> nn.Module:
    """ArcFace additive angular margin (Deng et al., CVPR 2019), margin 28.6 deg, scale 64."""
    return pml_losses.ArcFaceLoss(n_classes, dim, **{"margin": 28.6, "scale": 64, **kw})


def _normalized_softmax(dim: int, n_classes: int, **kw: Any) -> nn.Module:
    """Normalized softmax (Zhai & Wu, "Classification is a Strong Baseline", BMVC 2019)."""
    return pml_losses.NormalizedSoftmaxLoss(n_classes, dim, **{"temperature": 0.05, **kw})


def _daml(dim: int, n_classes: int, **kw: Any) -> nn.Module:
    """DAML (Duan et al., CVPR 2018): a generator of hard negatives, see :mod:`.daml`."""
    return DAMLLoss(dim, **kw)


METRIC_LOSSES: dict[str, Callable[..., nn.Module]] = {
    "contrastive": _contrastive,
    "triplet": _triplet,
    "npair": _npair,
    "margin": _margin,
    "center": _center,
    "proxy-anchor": _proxy_anchor,
    "multi-similarity": _multi_similarity,
    "arcface": _arcface,
    "normalized-softmax": _normalized_softmax,
    "daml": _daml,
}

DEFAULT_MINERS: dict[str, str | None] = {
    "contrastive": None,
    "triplet": "batch-hard",
    "npair": None,
    "margin": "distance-weighted",
    "center": None,
    "proxy-anchor": None,
    "multi-similarity": "multi-similarity",
    "arcface": None,
    "normalized-softmax": None,
    "daml": None,  # one random triplet per anchor, made hard by the generator
}


def _direction(**kw: Any) -> pml_miners.BaseMiner:
    from cbir.samplers.direction import DirectionMiner

    base = kw.pop("base", None)
    return DirectionMiner(base=get_miner(base) if isinstance(base, str) else base, **kw)


MINERS: dict[str, Callable[..., pml_miners.BaseMiner]] = {
    # Hermans, Beyer, Leibe, "In Defense of the Triplet Loss", 2017: hardest p and n per anchor.
    "batch-hard": lambda **kw: pml_miners.BatchHardMiner(**kw),
    # Schroff et al., FaceNet 2015: d_ap < d_an < d_ap + margin.
    "semi-hard": lambda **kw: pml_miners.TripletMarginMiner(
        **{"margin": 0.1, "type_of_triplets": "semihard", **kw}
    ),
    "all-triplets": lambda **kw: AllTripletsMiner(**kw),
    # Wu et al. 2017: negatives drawn with weight 1/q(d), q the density of distances on the sphere.
    "distance-weighted": lambda **kw: pml_miners.DistanceWeightedMiner(
        **{"cutoff": 0.5, "nonzero_loss_cutoff": 1.4, **kw}
    ),
    # Wang et al. 2019: pairs harder than the hardest pair of the other kind, +- epsilon.
    "multi-similarity": lambda **kw: pml_miners.MultiSimilarityMiner(**{"epsilon": 0.1, **kw}),
    "random-triplets": lambda **kw: RandomTripletsMiner(**kw),
    # the batch is (a, p, n, a, p, n, ...) as the triplet samplers lay it out.
    "as-sampled": lambda **kw: pml_miners.EmbeddingsAlreadyPackagedAsTriplets(**kw),
    # the seed's direction condition (cbir.samplers.direction): all triplets of the batch whose
    # negative lies on the far side of the anchor from the positive; "-same": the seed's own test.
    "direction": _direction,
    "direction-same": lambda **kw: _direction(**{"side": "same", **kw}),
}


def _key(name: str) -> str:
    return name.lower().replace("_", "-")


def get_metric_loss(name: str, dim: int, n_classes: int, **options: Any) -> nn.Module:
    """The PML loss registered as ``name`` for ``dim``-d embeddings of ``n_classes``
    training classes; ``options`` override its keyword arguments."""
    key = _key(name)
    if key not in METRIC_LOSSES:
        raise CbirError(f"unknown metric loss {name!r}; known: {', '.join(METRIC_LOSSES)}")
    return METRIC_LOSSES[key](int(dim), int(n_classes), **options)


def get_miner(name: str, **options: Any) -> pml_miners.BaseMiner:
    """The PML miner registered as ``name``; ``options`` override its keyword arguments
    (``direction`` takes ``base="batch-hard"`` etc. to filter another miner's triplets)."""
    key = _key(name)
    if key not in MINERS:
        raise CbirError(f"unknown miner {name!r}; known: {', '.join(MINERS)}")
    return MINERS[key](**options)


__all__ = [
    "DEFAULT_MINERS",
    "METRIC_LOSSES",
    "MINERS",
    "AllTripletsMiner",
    "CenterLoss",
    "DAMLLoss",
    "RandomTripletsMiner",
    "SoftmaxCenterLoss",
    "get_metric_loss",
    "get_miner",
]

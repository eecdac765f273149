"""Direction condition on triplets, strategy 6 of the MassImageRetrieval seed (Liu
Guiyang, github.com/guiyang882/MassImageRetrieval, README "the selection of positive and
negative samples is not on the same side").

A filter on triplets, so it is a PML miner (``--miner direction``), not a batch sampler:
it looks at the embeddings of the batch, which a sampler does not see.

The issue asks to keep a triplet when the negative lies on the side of the anchor that
the positive does not: the angle at ``x_a`` between ``x_p - x_a`` and ``x_n - x_a`` is
obtuse (``side="opposite"``, the default). The seed's own code
(``__calc_apn_cosine``) keeps the other half, ``0 < cos < 1`` (``side="same"``); both
are offered and benchmarked.
"""

from __future__ import annotations

from typing import Any

import torch
from pytorch_metric_learning.miners import BaseMiner
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from torch import Tensor


def direction_cosines(x: Tensor, a: Tensor, p: Tensor, n: Tensor) -> Tensor:
    """``cos`` of the angle at ``x[a]`` between ``x[p] - x[a]`` and ``x[n] - x[a]``
    (0 where either vector has zero length), from the Gram matrix: no per-triplet copies."""
    g = x @ x.t()
    dot = g[p, n] - g[a, p] - g[a, n] + g[a, a]
    lp = (g[a, a] + g[p, p] - 2 * g[a, p]).clamp(min=0).sqrt()
    ln = (g[a, a] + g[n, n] - 2 * g[a, n]).clamp(min=0).sqrt()
    denom = lp * ln
    return torch.where(denom > 1e-12, dot / denom.clamp(min=1e-12), torch.zeros_like(dot))


class DirectionMiner(BaseMiner):
    """Keep the triplets that pass the direction test.

    ``side="opposite"``: keep ``cos < max_cos`` (default 0: the negative is on the far
    side of the anchor from the positive). ``side="same"``: keep ``0 < cos < 1`` (the
    seed's test). Triplets to filter come from ``base`` (any PML miner; pair output is
    converted to triplets) or, by default, are all triplets of the batch.

    Args:
        side: "opposite" or "same".
        max_cos: threshold of the "opposite" test.
        base: miner whose triplets are filtered (None: all triplets).
        normalize: test on L2-normalised embeddings (the space PML's default
            ``LpDistance`` measures in); False: on the raw embeddings.
    """

    def __init__(
        self,
        side: str = "opposite",
        max_cos: float = 0.0,
        base: BaseMiner | None = None,
        normalize: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if side not in ("opposite", "same"):
            raise ValueError(f"side must be 'opposite' or 'same', got {side!r}")
        self.side = side
        self.max_cos = float(max_cos)
        self.base = base
        self.normalize = normalize

    def mine(
        self, embeddings: Tensor, labels: Tensor, ref_emb: Tensor, ref_labels: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        if ref_emb is not embeddings:
            raise ValueError("DirectionMiner mines within one batch (no ref_emb)")
        if self.base is None:
            a, p, n = lmu.get_all_triplets_indices(labels)
        else:
            a, p, n = lmu.convert_to_triplets(self.base(embeddings, labels), labels)
        x = torch.nn.functional.normalize(embeddings, dim=1) if self.normalize else embeddings
        cos = direction_cosines(x, a, p, n)
        keep = cos < self.max_cos if self.side == "opposite" else (cos > 0) & (cos < 1)
        return a[keep], p[keep], n[keep]

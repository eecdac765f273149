"""VSE++: Faghri, Fleet, Kiros, Fidler, "VSE++: Improving Visual-Semantic Embeddings with
Hard Negatives", BMVC 2018."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class VSELoss(nn.Module):
    """Hinge-based triplet ranking loss over a batch of (image, caption) pairs, both ways.

    With unit embeddings, ``s(i, j) = <f(image_i), g(caption_j)>`` and the positive pairs
    on the diagonal::

        image -> text:  c_ij = [margin + s(i, j) - s(i, i)]_+   (caption j a negative of image i)
        text -> image:  d_ij = [margin + s(i, j) - s(j, j)]_+   (image i a negative of caption j)

        VSE++ (Eq. 5, max_violation=True):  sum_i max_j c_ij + sum_j max_i d_ij
        VSE0  (Eq. 2, max_violation=False): sum_ij c_ij + sum_ij d_ij

    i.e. VSE++ keeps only the hardest negative of each query in the batch. ``groups``
    generalises the diagonal: pairs of one group (several captions of one image, or
    captions written per class) are not negatives of each other.

    Args:
        margin: the hinge margin alpha (paper: 0.2).
        max_violation: True for VSE++ (hardest negative), False for VSE0 (sum of hinges).
        reduction: "sum" over the batch as the paper's code does, or "mean".
    """

    def __init__(
        self, margin: float = 0.2, max_violation: bool = True, reduction: str = "sum"
    ) -> None:
        super().__init__()
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        self.margin = float(margin)
        self.max_violation = bool(max_violation)
        self.reduction = reduction

    def forward(self, images: Tensor, captions: Tensor, groups: Tensor | None = None) -> Tensor:
        """Loss of the batch: row ``i`` of ``images`` and of ``captions`` is a positive pair.

        Args:
            images, captions: ``(n, d)`` embeddings (L2-normalised by the caller).
            groups: ``(n,)`` group ids; rows with equal ids are not negatives (default:
                every row its own group).
        """
        s = images @ captions.t()
        pos = s.diagonal()
        n = s.shape[0]
        if groups is None:
            neg = ~torch.eye(n, dtype=torch.bool, device=s.device)
        else:
            neg = groups[:, None] != groups[None, :]
        cost_c = (
            (self.margin + s - pos[:, None]).clamp(min=0).masked_fill(~neg, 0)
        )  # row i: image i
        cost_i = (
            (self.margin + s - pos[None, :]).clamp(min=0).masked_fill(~neg, 0)
        )  # column j: caption j
        if self.max_violation:
            per_image, per_caption = cost_c.max(1).values, cost_i.max(0).values
        else:
            per_image, per_caption = cost_c.sum(1), cost_i.sum(0)
        total = per_image.sum() + per_caption.sum()
        return total if self.reduction == "sum" else total / max(n, 1)


def vse_loss(method: str, **options: float | bool | str) -> VSELoss:
    """The loss of a joint method: "vsepp" (hardest negative) or "vse0" (sum of hinges)."""
    if method not in ("vsepp", "vse0"):
        raise ValueError(f"not a joint embedding method: {method!r}")
    opts = dict(options)
    opts.setdefault("max_violation", method == "vsepp")
    return VSELoss(**opts)  # type: ignore[arg-type]

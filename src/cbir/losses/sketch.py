"""The cross-modal loss of sketch queries (after Liu et al., "Deep Sketch Hashing: Fast
Free-hand Sketch-Based Image Retrieval", CVPR 2017): drawings must land near their own
image and among the images of their category.

DSH ties the sketch and image codes of one category together and each sketch to its own
image; here the image side is the frozen backbone's space (centred, unit length), so the
same two aims become two softmax terms over a batch of drawing directions ``s`` and image
directions ``x``: a supervised contrastive term (Khosla et al., NeurIPS 2020) whose
positives are the images of the drawing's class, and an instance term (InfoNCE) whose
positive is the drawing's own image.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def sketch_loss(
    s: Tensor,
    x: Tensor,
    labels: Tensor,
    temperature: float = 0.1,
    instance: float = 0.5,
) -> tuple[Tensor, dict[str, float]]:
    """``(loss, parts)`` for unit rows ``s`` (drawings) and ``x`` (their images, row by
    row); ``labels`` ``(n,)`` the classes. ``instance``: weight of the own-image term."""
    logits = s @ x.T / temperature
    logp = F.log_softmax(logits, dim=1)
    same = (labels[:, None] == labels[None, :]).float()
    category = -(logp * same).sum(1) / same.sum(1)
    own = -logp.diagonal()
    loss = category.mean() + instance * own.mean()
    return loss, {"category": category.mean().item(), "own": own.mean().item()}


def check_options(temperature: float = 0.1, instance: float = 0.5) -> dict[str, float]:
    """The loss options, checked (``--loss-option temperature=... instance=...``)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if instance < 0:
        raise ValueError(f"instance must be >= 0, got {instance}")
    return {"temperature": float(temperature), "instance": float(instance)}


__all__ = ["check_options", "sketch_loss"]

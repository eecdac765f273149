"""Deep Cross-Modal Hashing (Jiang and Li, "Deep Cross-Modal Hashing", CVPR 2017): the
loss that puts images and captions into one Hamming space.

``f`` (images) and ``g`` (captions) are the real-valued outputs of the two hash layers,
``(batch, bits)``; the codes are their signs. With ``theta_ij = f_i . g_j / 2`` and
``s_ij = 1`` when image i and caption j are of one group (a class, or one image), the
loss is the paper's equation (2) on a mini-batch, each term a mean:

- the negative log-likelihood of the inter-modal similarities,
  ``log(1 + exp(theta_ij)) - s_ij theta_ij``;
- ``gamma`` times the quantisation error ``|b - f|^2 + |b - g|^2`` with the pair's
  common code ``b = sign(f_i + g_i)`` (row i of ``f`` and ``g`` is a matching pair);
- ``eta`` times the bit balance ``|mean_i f_i|^2 + |mean_i g_i|^2`` (each bit is +1 on
  half the items).

The paper alternates over the whole training set (F, G and B kept for every item);
here the batch stands for it, as the other pairwise losses without a memory bank do.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from cbir.losses.hashing.base import similarity


def dcmh_loss(
    f: Tensor,
    g: Tensor,
    image_groups: Tensor,
    text_groups: Tensor,
    gamma: float = 1.0,
    eta: float = 1.0,
) -> tuple[Tensor, dict[str, float]]:
    """``(loss, parts)`` for image outputs ``f`` and caption outputs ``g`` (row i a pair)."""
    s = similarity(image_groups, text_groups)
    theta = 0.5 * f @ g.T
    nll = (F.softplus(theta) - s * theta).mean()
    b = (f + g).sign().detach()
    quant = ((b - f) ** 2 + (b - g) ** 2).mean()
    balance = (f.mean(0) ** 2 + g.mean(0) ** 2).mean()
    loss = nll + gamma * quant + eta * balance
    return loss, {"nll": nll.item(), "quant": quant.item(), "balance": balance.item()}


def check_options(gamma: float = 1.0, eta: float = 1.0) -> dict[str, float]:
    """The loss options, checked (``--loss-option gamma=... eta=...``)."""
    if gamma < 0 or eta < 0:
        raise ValueError(f"gamma and eta must be >= 0, got gamma={gamma}, eta={eta}")
    return {"gamma": float(gamma), "eta": float(eta)}

"""DPSH: Li, Wang, Kang, "Feature Learning based Deep Supervised Hashing with Pairwise
Labels", IJCAI 2016."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cbir.losses.hashing.base import HashingLoss, masked_mean


class DPSH(HashingLoss):
    """Negative log-likelihood of the pairwise labels plus a quantization penalty (Eq. 2-3).

    With ``theta_ij = 1/2 u_i^T u_j`` and ``p(s_ij = 1) = sigmoid(theta_ij)``::

        loss = mean_{pairs} [ log(1 + exp(theta_ij)) - s_ij theta_ij ]
               + eta * mean_{entries} (u - sign(u))^2

    ``log(1 + exp(.))`` is computed with ``softplus`` (no overflow). The paper relaxes
    ``b_i = sign(u_i)`` with ``u_i`` and pairs every sampled image with the whole training
    set through stored outputs: pass ``n_samples`` and ``index`` for that memory bank.

    Args:
        bits: code length.
        eta: weight of the quantization term. The paper sums both terms over the training
            set and tunes eta on validation data; with both terms averaged as here,
            0.1 is the usual setting (DeepHash-pytorch).
        n_classes: unused except for checking multi-hot labels.
        n_samples: training-set size for the memory bank (None: in-batch pairs).
    """

    def __init__(
        self,
        bits: int,
        n_classes: int | None = None,
        *,
        eta: float = 0.1,
        n_samples: int | None = None,
    ):
        super().__init__(bits, n_classes, n_samples)
        self.eta = float(eta)

    def compute_loss(self, u: Tensor, labels: Tensor, index: Tensor | None) -> Tensor:
        v, s, valid = self.pairs(u, labels, index)
        theta = 0.5 * u @ v.t()
        nll = masked_mean(F.softplus(theta) - s * theta, valid)
        b = torch.where(u >= 0, 1.0, -1.0).to(u.dtype)
        return nll + self.eta * (u - b).pow(2).mean()

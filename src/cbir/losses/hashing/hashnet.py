"""HashNet: Cao, Long, Wang, Yu, "HashNet: Deep Learning to Hash by Continuation", ICCV 2017."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cbir.losses.hashing.base import HashingLoss, balanced_pair_weights, masked_mean


class HashNet(HashingLoss):
    """Weighted maximum likelihood on ``h = tanh(beta * u)`` with continuation on beta.

    With ``a_ij = alpha <h_i, h_j>`` (Eq. 5)::

        loss = mean_{pairs} w_ij [ log(1 + exp(a_ij)) - s_ij a_ij ]
        w_ij = |S| / |S1| if s_ij = 1 else |S| / |S0|     (pairs of the batch)

    i.e. the mean over similar pairs plus the mean over dissimilar pairs.

    Continuation: the trainer raises ``beta`` as training goes on, by calling
    ``on_step(iteration)`` (:meth:`step_beta`), which sets
    ``beta = init_beta * (1 + gamma * iteration) ** power``
    (the official code does it every ``step_size = 200`` iterations with gamma = 0.005,
    power = 0.5), or by setting ``loss.beta`` directly. ``sign(u)`` gives the codes.

    Args:
        bits: code length.
        alpha: scale of the inner product in the sigmoid; default ``10 / bits`` (official code).
        init_beta: beta at iteration 0 (1.0).
        gamma: growth rate of the continuation schedule (0.005).
        power: exponent of the continuation schedule (0.5).
        n_classes: unused except for checking multi-hot labels.
        n_samples: training-set size for a memory bank of outputs (see ``HashingLoss``);
            the bank stores ``tanh(beta * u)``.
    """

    def __init__(
        self,
        bits: int,
        n_classes: int | None = None,
        *,
        alpha: float | None = None,
        init_beta: float = 1.0,
        gamma: float = 0.005,
        power: float = 0.5,
        n_samples: int | None = None,
    ):
        super().__init__(bits, n_classes, n_samples)
        self.alpha = 10.0 / bits if alpha is None else float(alpha)
        self.init_beta = float(init_beta)
        self.gamma = float(gamma)
        self.power = float(power)
        self.beta = self.init_beta

    def step_beta(self, iteration: int) -> float:
        """Set and return ``beta = init_beta * (1 + gamma * iteration) ** power``."""
        self.beta = self.init_beta * (1.0 + self.gamma * iteration) ** self.power
        return self.beta

    def on_step(self, iteration: int) -> None:
        self.step_beta(iteration)

    def compute_loss(self, u: Tensor, labels: Tensor, index: Tensor | None) -> Tensor:
        h = torch.tanh(self.beta * u)
        v, s, valid = self.pairs(h, labels, index)
        a = self.alpha * h @ v.t()
        nll = F.softplus(a) - s * a
        return masked_mean(balanced_pair_weights(s, valid) * nll, valid)

"""A small autoencoder with a binary bottleneck (tanh + straight-through sign), in the
spirit of binary autoencoders for hashing (Carreira-Perpinan, Raziperchikolaei, CVPR 2015)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def straight_through_sign(h: Tensor) -> Tensor:
    """``sign(h)`` (0 -> +1) in the forward pass, identity gradient in the backward pass."""
    b = torch.where(h >= 0, 1.0, -1.0).to(h.dtype)
    return h + (b - h).detach()


class BinaryAutoencoder:
    """Encoder ``x -> tanh(.)`` -> straight-through sign -> decoder; codes = the signs.

    Loss: ``mse(decoder(sign(h)), x) + quant_weight * mean((|h| - 1)^2)`` on standardised
    inputs, trained with Adam.

    Args:
        bits: code length.
        hidden: width of the hidden layer of encoder and decoder.
        quant_weight: weight of the quantization penalty.
        lr: Adam learning rate.
        batch_size: minibatch size.
    """

    def __init__(
        self,
        bits: int,
        hidden: int = 128,
        quant_weight: float = 0.1,
        lr: float = 1e-3,
        batch_size: int = 128,
    ):
        self.bits = int(bits)
        self.hidden = int(hidden)
        self.quant_weight = float(quant_weight)
        self.lr = float(lr)
        self.batch_size = int(batch_size)
        self.encoder: nn.Module | None = None
        self.decoder: nn.Module | None = None
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None
        self.history_: list[float] = []

    def _standardise(self, X: np.ndarray) -> Tensor:
        assert self.mean is not None and self.std is not None
        return torch.from_numpy(
            ((np.asarray(X, dtype=np.float64) - self.mean) / self.std).astype(np.float32)
        )

    def fit(self, X: np.ndarray, epochs: int = 50, seed: int = 0) -> BinaryAutoencoder:
        """Train from scratch; deterministic for ``seed`` (global torch RNG untouched)."""
        X = np.asarray(X, dtype=np.float64)
        self.mean = X.mean(0)
        self.std = X.std(0) + 1e-8
        x = self._standardise(X)
        dim = x.shape[1]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.encoder = nn.Sequential(
                nn.Linear(dim, self.hidden), nn.ReLU(), nn.Linear(self.hidden, self.bits)
            )
            self.decoder = nn.Sequential(
                nn.Linear(self.bits, self.hidden), nn.ReLU(), nn.Linear(self.hidden, dim)
            )
        params = list(self.encoder.parameters()) + list(self.decoder.parameters())
        opt = torch.optim.Adam(params, lr=self.lr)
        gen = torch.Generator().manual_seed(seed)
        self.history_ = []
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=gen)
            total = 0.0
            for start in range(0, len(x), self.batch_size):
                xb = x[order[start : start + self.batch_size]]
                h = torch.tanh(self.encoder(xb))
                recon = self.decoder(straight_through_sign(h))
                loss = F.mse_loss(recon, xb) + self.quant_weight * (h.abs() - 1).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(xb)
            self.history_.append(total / len(x))
        return self

    @torch.no_grad()
    def transform(self, X: np.ndarray) -> np.ndarray:
        """``(n, bits)`` int8 codes in {-1, +1} (0 -> +1)."""
        if self.encoder is None:
            raise RuntimeError("BinaryAutoencoder.transform before fit")
        h = self.encoder(self._standardise(X))
        return np.where(h.numpy() >= 0, 1, -1).astype(np.int8)

    @torch.no_grad()
    def reconstruction_error(self, X: np.ndarray) -> float:
        """Mean squared error of ``decoder(codes)`` on standardised ``X``."""
        if self.encoder is None or self.decoder is None:
            raise RuntimeError("BinaryAutoencoder used before fit")
        x = self._standardise(X)
        return float(
            F.mse_loss(self.decoder(straight_through_sign(torch.tanh(self.encoder(x)))), x)
        )

"""Sparse codes: backbone features -> a high-dimensional code with few active units.

Two encoders, both an MLP (:class:`cbir.heads.learned.Head`, usually one linear layer)
followed by a sparsifying activation and trained as an autoencoder with a linear
decoder (a dictionary with unit-norm atoms) on standardised features:

- ``sparse-topk``: the k-sparse autoencoder (Makhzani & Frey, "k-Sparse Autoencoders",
  ICLR 2014): only the ``k`` largest pre-activations are kept; a ReLU after them (as in
  the TopK sparse autoencoders of Gao et al., "Scaling and evaluating sparse
  autoencoders", 2024) keeps codes non-negative, so scores are overlaps of active units.
  Every code has at most ``k`` active units, by construction.
- ``sparse-l1``: ReLU units with an L1 penalty on the activations (the classic sparse
  autoencoder; e.g. Ng, "Sparse autoencoder", CS294A notes 2011); the sparsity is
  learned, optionally capped at ``k`` units.

An optional label term (``supervised=W``) adds W times the normalised-softmax loss of the
L2-normalised codes against learned class proxies (Zhai & Wu, "Classification is a
Strong Baseline for Deep Metric Learning", BMVC 2019; pytorch-metric-learning's
``NormalizedSoftmaxLoss``), which makes the cosine of two codes follow their classes.

Codes for the index are L2-normalised CSR rows (float32), so the inverted index's sparse
dot product (:mod:`cbir.index.sparse`) is their cosine similarity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SPARSE_METHODS = ("sparse-topk", "sparse-l1")


def topk_relu(z: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(values, indices) of the ``k`` largest entries of each row, values through ReLU."""
    vals, idx = torch.topk(z, min(k, z.shape[1]), dim=1)
    return F.relu(vals), idx


class SparseAutoencoder(nn.Module):
    """Encoder (a :class:`~cbir.heads.learned.Head`) + sparsifying activation + linear
    decoder with unit-norm atoms (columns), tied to the encoder at initialisation when
    the encoder is one linear layer.

    Args:
        encoder: the head producing ``dim`` pre-activations.
        in_dim: feature dimension reconstructed.
        activation: "topk" or "relu".
        k: active units kept (required for "topk"; an optional cap for "relu").
    """

    def __init__(self, encoder: nn.Module, in_dim: int, activation: str, k: int | None) -> None:
        super().__init__()
        self.encoder = encoder
        dim = int(encoder.config["out_dim"])
        if activation == "topk" and not k:
            raise ValueError("the top-k activation needs k")
        self.activation, self.k, self.dim = activation, k, dim
        self.decoder = nn.Parameter(torch.empty(dim, in_dim))  # one atom per row
        self.bias = nn.Parameter(torch.zeros(in_dim))
        last = [m for m in encoder.modules() if isinstance(m, nn.Linear)][-1]
        with torch.no_grad():
            if last.in_features == in_dim:  # tied initialisation (Makhzani & Frey)
                self.decoder.copy_(last.weight)
            else:
                nn.init.normal_(self.decoder)
            self.normalise()

    @torch.no_grad()
    def normalise(self) -> None:
        """Unit-norm decoder atoms (so a small code cannot be bought with large atoms)."""
        self.decoder.div_(self.decoder.norm(dim=1, keepdim=True).clamp_min(1e-8))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(dense codes ``(n, dim)``, reconstruction ``(n, in_dim)``)."""
        z = self.encoder(x)
        if self.activation == "topk" or self.k:
            vals, idx = topk_relu(z, int(self.k))  # type: ignore[arg-type]
            h = torch.zeros_like(z).scatter(1, idx, vals)
            recon = F.embedding_bag(idx, self.decoder, per_sample_weights=vals, mode="sum")
        else:
            h = F.relu(z)
            recon = h @ self.decoder
        return h, recon + self.bias

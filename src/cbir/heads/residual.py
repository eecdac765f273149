"""Heads that start as the identity, so training begins at the frozen features' geometry.

:class:`ResidualHead` maps ``x`` to ``P x + f(x)``: ``P`` a linear map initialised to the
identity (``out_dim == in_dim``) or to the top ``out_dim`` principal axes of the training
features, ``f`` an MLP whose last layer is zero at initialisation. Before the first step
the embedding is the (PCA-projected) centred backbone feature, so cosine retrieval equals
the frozen features' (exactly for the identity); the metric loss then moves it only as
far as the gradient steps take it, which, with a similarity-distillation term
(:mod:`cbir.losses.metric.distill`), keeps what the backbone knows about unseen classes.
Residual adapters on frozen features in the spirit of He et al., "Deep Residual
Learning", CVPR 2016, and of CLIP-Adapter (Gao et al., IJCV 2023).

:func:`build_head` rebuilds either head from the ``head`` entry of a checkpoint (entries
without a ``type`` are the plain :class:`~cbir.heads.head.Head` of older runs).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from cbir.errors import CbirError
from cbir.heads.head import Head

#: How the linear part of a residual head starts.
INITS = ("pca", "pca-whiten", "identity")


def principal_axes(x: Tensor, k: int, whiten: bool = False) -> Tensor:
    """The top ``k`` principal axes ``(k, d)`` of the rows of ``x`` (centred here).

    ``whiten``: each axis divided by its standard deviation, so the projected coordinates
    have unit variance (PCA whitening, as Jegou & Chum, "Negative evidences and
    co-occurrences in image retrieval", ECCV 2012, whiten retrieval descriptors).
    """
    xc = x - x.mean(0)
    cov = xc.T @ xc / max(len(xc) - 1, 1)
    vals, vecs = torch.linalg.eigh(cov.double())  # ascending eigenvalues
    axes = vecs[:, -k:].flip(1).T
    # a deterministic sign: the largest coordinate of each axis is positive
    sign = torch.sign(axes.gather(1, axes.abs().argmax(1, keepdim=True)))
    axes = axes * sign
    if whiten:
        var = vals[-k:].flip(0).clamp_min(1e-12)
        axes = axes / var.sqrt()[:, None]
    return axes.float()


class ResidualHead(nn.Module):
    """``P x + f(x)``: ``P`` identity or PCA at initialisation, ``f`` zero (see module doc).

    Args:
        in_dim: input (backbone feature) dimension.
        out_dim: embedding dimension (at most ``in_dim``).
        hidden: hidden widths of ``f`` (empty: ``f`` is one linear layer).
        dropout: dropout in ``f``'s hidden layers.
        batchnorm: batch norm in ``f``'s hidden layers.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: list[int] | tuple[int, ...] = (),
        dropout: float = 0.0,
        batchnorm: bool = False,
    ) -> None:
        super().__init__()
        if out_dim > in_dim:
            raise CbirError(
                f"a residual head maps {in_dim}-d features to at most {in_dim} dimensions;"
                f" use --dim {in_dim} or less, or --head mlp"
            )
        self.proj = nn.Linear(in_dim, out_dim, bias=False)
        self.branch = Head(in_dim, out_dim, hidden, dropout, batchnorm)
        self.config: dict[str, Any] = {"type": "residual", **self.branch.config}
        last = self.branch.net[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(out_dim, in_dim))

    @torch.no_grad()
    def initialise(self, how: str, x: Tensor | None = None) -> None:
        """Set ``P``: ``"identity"`` (needs ``out_dim == in_dim``), or ``"pca"`` /
        ``"pca-whiten"`` of ``x``."""
        out_dim, in_dim = self.proj.weight.shape
        if how == "identity":
            if out_dim != in_dim:
                raise CbirError(
                    f"--head-init identity needs --dim {in_dim} (the feature dimension),"
                    f" got {out_dim}; use --head-init pca"
                )
            self.proj.weight.copy_(torch.eye(in_dim))
        elif how in ("pca", "pca-whiten"):
            if x is None:
                raise CbirError(f"--head-init {how} needs the training features")
            self.proj.weight.copy_(principal_axes(x, out_dim, whiten=how == "pca-whiten"))
        else:
            raise CbirError(f"unknown --head-init {how!r}; use {' or '.join(INITS)}")

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x) + self.branch(x)


#: Head kinds by the ``type`` of their config (``--head``).
HEADS: dict[str, type[nn.Module]] = {"mlp": Head, "residual": ResidualHead}


def build_head(config: dict[str, Any]) -> nn.Module:
    """The head a checkpoint's ``head`` entry describes (no ``type``: a plain MLP)."""
    kw = dict(config)
    kind = kw.pop("type", "mlp")
    if kind not in HEADS:
        raise CbirError(f"unknown head type {kind!r} in the checkpoint; known: {', '.join(HEADS)}")
    return HEADS[kind](**kw)

"""The head: a small MLP on backbone features, the trainable part of every learned model."""

from __future__ import annotations

from torch import Tensor, nn


class Head(nn.Module):
    """MLP ``in_dim -> hidden... -> out_dim`` (ReLU, optional dropout and batch norm).

    Args:
        in_dim: input (backbone feature) dimension.
        out_dim: code length or embedding dimension.
        hidden: widths of the hidden layers (empty: one linear layer).
        dropout: dropout before each hidden layer's output (training only).
        batchnorm: batch norm after each hidden linear layer.
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
        self.config = {
            "in_dim": int(in_dim),
            "out_dim": int(out_dim),
            "hidden": [int(h) for h in hidden],
            "dropout": float(dropout),
            "batchnorm": bool(batchnorm),
        }
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers.append(nn.Linear(d, h))
            if batchnorm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = h
        layers.append(nn.Linear(d, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

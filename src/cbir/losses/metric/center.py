"""Softmax + center loss, after Wen, Zhang, Li, Qiao, "A Discriminative Feature Learning
Approach for Deep Face Recognition", ECCV 2016.

pytorch-metric-learning has no center loss; these are PML losses (subclasses of its
``BaseMetricLossFunction``), so they take ``(embeddings, labels, indices_tuple=None)``,
a ``reducer`` and the rest of PML's keywords like any PML loss.
"""

from __future__ import annotations

from typing import Any

import torch
from pytorch_metric_learning.losses import BaseMetricLossFunction
from pytorch_metric_learning.utils import common_functions as c_f
from torch import Tensor


class CenterLoss(BaseMetricLossFunction):
    """``L_C = 1/2 ||x_i - c_{y_i}||^2`` per sample (Eq. 2), reduced by PML's reducer
    (mean over the batch by default, as the authors' Caffe layer divides by the batch).

    The centres are not learned by the optimiser: they are a buffer moved after every
    training-mode forward by the paper's rule (Eq. 4)::

        delta_c_j = sum_i [y_i = j] (c_j - x_i) / (1 + sum_i [y_i = j])
        c_j <- c_j - alpha * delta_c_j

    computed with the batch's features before the step, as in Algorithm 1. Centres
    start at zero. ``indices_tuple`` is ignored (every sample contributes).

    Args:
        num_classes: number of training classes.
        embedding_size: dimension of the features ``x``.
        alpha: learning rate of the centres (the paper uses 0.5).
    """

    def __init__(
        self, num_classes: int, embedding_size: int, alpha: float = 0.5, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.num_classes = int(num_classes)
        self.embedding_size = int(embedding_size)
        self.alpha = float(alpha)
        self.centers: Tensor
        self.register_buffer("centers", torch.zeros(self.num_classes, self.embedding_size))

    def compute_loss(
        self,
        embeddings: Tensor,
        labels: Tensor,
        indices_tuple: Any,
        ref_emb: Tensor,
        ref_labels: Tensor,
    ) -> dict:
        c_f.labels_required(labels)
        c_f.ref_not_supported(embeddings, labels, ref_emb, ref_labels)
        centers = self.centers.to(embeddings.device, embeddings.dtype)
        losses = 0.5 * (embeddings - centers[labels]).pow(2).sum(1)
        return {
            "loss": {
                "losses": losses,
                "indices": c_f.torch_arange_from_size(embeddings),
                "reduction_type": "element",
            }
        }

    def forward(self, embeddings: Tensor, labels: Tensor | None = None, indices_tuple: Any = None,
                ref_emb: Tensor | None = None, ref_labels: Tensor | None = None) -> Tensor:  # fmt: skip
        """The loss of the batch; in training mode, then moves the centres (Eq. 4)."""
        loss = super().forward(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        if self.training and labels is not None:
            self.update_centers(embeddings, labels)
        return loss

    @torch.no_grad()
    def update_centers(self, embeddings: Tensor, labels: Tensor) -> None:
        """``c_j <- c_j - alpha * delta_c_j`` for the classes of the batch (Eq. 4)."""
        x = embeddings.detach().to(self.centers.dtype)
        y = labels.to(self.centers.device).long()
        count = torch.bincount(y, minlength=self.num_classes).to(x.dtype)
        sums = torch.zeros_like(self.centers).index_add_(0, y, x)
        delta = (count[:, None] * self.centers - sums) / (1.0 + count[:, None])
        self.centers -= self.alpha * delta


class SoftmaxCenterLoss(BaseMetricLossFunction):
    """``L = L_S + lambda * L_C`` (Eq. 5): softmax cross-entropy of a linear classifier
    ``W x + b`` on the embeddings plus the :class:`CenterLoss`. The classifier's
    parameters belong to this loss (give ``loss.parameters()`` to the optimiser).

    Args:
        num_classes: number of training classes.
        embedding_size: embedding dimension.
        lambda_c: weight of the center loss (the paper's lambda; 0.003 on faces).
        alpha: learning rate of the centres (0.5 in the paper).
    """

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        lambda_c: float = 0.003,
        alpha: float = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.lambda_c = float(lambda_c)
        self.classifier = torch.nn.Linear(embedding_size, num_classes)
        self.center = CenterLoss(num_classes, embedding_size, alpha=alpha)
        self.cross_entropy = torch.nn.CrossEntropyLoss(reduction="none")

    def _sub_loss_names(self) -> list[str]:
        return ["softmax", "center"]

    def compute_loss(
        self,
        embeddings: Tensor,
        labels: Tensor,
        indices_tuple: Any,
        ref_emb: Tensor,
        ref_labels: Tensor,
    ) -> dict:
        c_f.labels_required(labels)
        c_f.ref_not_supported(embeddings, labels, ref_emb, ref_labels)
        self.classifier.to(embeddings.device, embeddings.dtype)
        idx = c_f.torch_arange_from_size(embeddings)
        ce = self.cross_entropy(self.classifier(embeddings), labels.long())
        center = self.center.compute_loss(embeddings, labels, None, embeddings, labels)["loss"][
            "losses"
        ]
        return {
            "softmax": {"losses": ce, "indices": idx, "reduction_type": "element"},
            "center": {
                "losses": self.lambda_c * center,
                "indices": idx,
                "reduction_type": "element",
            },
        }

    def forward(self, embeddings: Tensor, labels: Tensor | None = None, indices_tuple: Any = None,
                ref_emb: Tensor | None = None, ref_labels: Tensor | None = None) -> Tensor:  # fmt: skip
        """The loss of the batch; in training mode, then moves the centres (Eq. 4)."""
        loss = super().forward(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        if self.training and labels is not None:
            self.center.update_centers(embeddings, labels)
        return loss

"""Common base of the deep supervised hashing losses.

Every loss takes ``u``, the real-valued ``(batch, bits)`` output of a linear hash layer
(before any tanh/sigmoid: losses that need a squashing apply it themselves), and labels,
either ``(batch,)`` integer class ids or ``(batch, C)`` multi-hot rows. Two samples are
*similar* (``s_ij = 1``) when they share at least one label. Codes are ``sign(u)`` for
every loss here (see :func:`cbir.losses.hashing.codes.sign_codes`).

Pairwise losses (DSH, DPSH, HashNet, DCH) can keep a memory bank of the outputs of the
whole training set, as the DPSH paper's algorithm does: build the loss with
``n_samples=len(train_set)`` and pass ``index`` (the dataset indices of the batch) to
``forward``; the batch is then paired with every sample seen so far instead of only with
the rest of the batch. Without ``n_samples`` (the default) pairs are taken within the batch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def similarity(labels_a: Tensor, labels_b: Tensor) -> Tensor:
    """``s_ij`` in {0, 1} (float): 1 when sample i of ``a`` and j of ``b`` share a label.

    Args:
        labels_a: ``(n,)`` int class ids or ``(n, C)`` multi-hot.
        labels_b: same kind as ``labels_a``, ``(m,)`` or ``(m, C)``.
    """
    if labels_a.dim() == 1:
        return (labels_a[:, None] == labels_b[None, :]).float()
    return ((labels_a.float() @ labels_b.float().t()) > 0).float()


class HashingLoss(nn.Module):
    """Base class: ``forward(u, labels, index=None) -> scalar loss``.

    Subclasses implement :meth:`compute_loss`; pairwise ones call :meth:`pairs`.

    Args:
        bits: code length (number of columns of ``u``).
        n_classes: number of classes (needed by CSQ and DLBHC, checked against
            multi-hot labels otherwise).
        n_samples: size of the training set to keep a memory bank of outputs for
            (pairwise losses only; requires ``index`` in ``forward``). None: in-batch pairs.
    """

    def __init__(self, bits: int, n_classes: int | None = None, n_samples: int | None = None):
        super().__init__()
        if bits <= 0:
            raise ValueError(f"bits must be positive, got {bits}")
        self.bits = int(bits)
        self.n_classes = None if n_classes is None else int(n_classes)
        self.n_samples = None if n_samples is None else int(n_samples)
        self.bank_u: Tensor | None
        self.bank_labels: Tensor | None
        self.bank_filled: Tensor | None
        self.register_buffer("bank_u", None, persistent=False)
        self.register_buffer("bank_labels", None, persistent=False)
        self.register_buffer("bank_filled", None, persistent=False)
        self._given: tuple[Tensor, Tensor] | None = None

    def on_step(self, iteration: int) -> None:
        """Hook after optimisation step ``iteration`` (1-based); a schedule of the loss's
        own (HashNet's continuation) overrides it."""

    def forward(self, u: Tensor, labels: Tensor, index: Tensor | None = None) -> Tensor:
        """Loss of a batch.

        Args:
            u: ``(batch, bits)`` real-valued hash-layer outputs.
            labels: ``(batch,)`` int class ids or ``(batch, C)`` multi-hot.
            index: ``(batch,)`` dataset indices (used by the memory bank, if any).
        """
        if u.dim() != 2 or u.shape[1] != self.bits:
            raise ValueError(f"u must be (batch, bits={self.bits}), got {tuple(u.shape)}")
        if labels.shape[0] != u.shape[0] or labels.dim() not in (1, 2):
            raise ValueError(f"labels {tuple(labels.shape)} do not match u {tuple(u.shape)}")
        if labels.dim() == 2 and self.n_classes is not None and labels.shape[1] != self.n_classes:
            raise ValueError(
                f"multi-hot labels have {labels.shape[1]} columns, not {self.n_classes}"
            )
        if index is not None and index.shape != (u.shape[0],):
            raise ValueError(f"index must be (batch,), got {tuple(index.shape)}")
        return self.compute_loss(u, labels, index)

    def compute_loss(self, u: Tensor, labels: Tensor, index: Tensor | None) -> Tensor:
        raise NotImplementedError

    def pair_loss(self, u: Tensor, s: Tensor, valid: Tensor) -> Tensor:
        """The loss on given pairs of ``u`` only (e.g. relevance feedback), for the pairwise
        losses (those that call :meth:`pairs`): ``s`` the ``(n, n)`` 0/1 similarity,
        ``valid`` the bool mask of the pairs to count; no labels, no memory bank."""
        self._given = (s.to(u.dtype), valid)
        try:
            return self.compute_loss(
                u, torch.zeros(len(u), dtype=torch.long, device=u.device), None
            )
        finally:
            self._given = None

    def pairs(
        self, u: Tensor, labels: Tensor, index: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The other side of the pairs of the batch.

        Returns ``(v, s, valid)``: ``v`` is ``u`` itself (in-batch) or the memory bank
        (detached, including this batch); ``s`` the ``(batch, len(v))`` 0/1 similarity;
        ``valid`` a bool mask of the pairs to count (no self-pairs, no empty bank slots).
        """
        if self._given is not None:
            return u, self._given[0], self._given[1]
        if self.n_samples is None or index is None:
            valid = ~torch.eye(len(u), dtype=torch.bool, device=u.device)
            return u, similarity(labels, labels), valid
        self._update_bank(u, labels, index)
        assert self.bank_u is not None and self.bank_labels is not None
        assert self.bank_filled is not None
        valid = self.bank_filled[None, :].expand(len(u), -1).clone()
        valid[torch.arange(len(u), device=u.device), index] = False
        return self.bank_u, similarity(labels, self.bank_labels), valid

    @torch.no_grad()
    def _update_bank(self, u: Tensor, labels: Tensor, index: Tensor) -> None:
        assert self.n_samples is not None
        if self.bank_u is None or self.bank_u.dtype != u.dtype or self.bank_u.device != u.device:
            self.bank_u = torch.zeros(self.n_samples, self.bits, dtype=u.dtype, device=u.device)
            shape = (self.n_samples,) + tuple(labels.shape[1:])
            self.bank_labels = torch.full(shape, -1, dtype=labels.dtype, device=u.device)
            if labels.dim() == 2:
                self.bank_labels.zero_()
            self.bank_filled = torch.zeros(self.n_samples, dtype=torch.bool, device=u.device)
        assert self.bank_labels is not None and self.bank_filled is not None
        self.bank_u[index] = u.detach()
        self.bank_labels[index] = labels.to(self.bank_labels.dtype)
        self.bank_filled[index] = True


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over ``mask`` (0 when the mask is empty, keeping the graph)."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1)


def balanced_pair_weights(s: Tensor, valid: Tensor) -> Tensor:
    """HashNet/DCH weights ``w_ij = |S|/|S1|`` (similar) and ``|S|/|S0|`` (dissimilar).

    ``S`` is the set of valid pairs, ``S1``/``S0`` its similar/dissimilar parts; invalid
    pairs get 0. With these weights the mean over ``S`` of ``w * l`` equals
    ``mean_{S1} l + mean_{S0} l``.
    """
    v = valid.to(s.dtype)
    n = v.sum()
    n1 = (s * v).sum()
    n0 = n - n1
    w1 = n / n1.clamp(min=1)
    w0 = n / n0.clamp(min=1)
    return v * (s * w1 + (1 - s) * w0)

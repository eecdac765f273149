"""VSE++ / VSE0 loss on a worked example: the hardest negative is picked in both
directions, and the gradient flows only through it (Faghri et al., BMVC 2018)."""

from __future__ import annotations

import pytest
import torch

from cbir.losses.vsepp import VSELoss, vse_loss

# s(i, j) = <image_i, caption_j>; with images = I, captions = S^T gives exactly this S.
S = torch.tensor(
    [
        [0.9, 0.8, 0.1],
        [0.5, 0.6, 0.55],
        [0.2, 0.85, 0.7],
    ],
    dtype=torch.float64,
)
# margin 0.2. image -> text, row i: [0.2 + S[i, j] - S[i, i]]_+ for j != i
#   row 0: j=1 0.1, j=2 0        -> hardest j=1 (0.1),  sum 0.1
#   row 1: j=0 0.1, j=2 0.15     -> hardest j=2 (0.15), sum 0.25
#   row 2: j=0 0,   j=1 0.35     -> hardest j=1 (0.35), sum 0.35
# text -> image, column j: [0.2 + S[i, j] - S[j, j]]_+ for i != j
#   col 0: 0, 0                  -> 0
#   col 1: i=0 0.4, i=2 0.45     -> hardest i=2 (0.45), sum 0.85
#   col 2: i=0 0,   i=1 0.05     -> hardest i=1 (0.05), sum 0.05
VSEPP = 0.1 + 0.15 + 0.35 + 0.0 + 0.45 + 0.05
VSE0 = 0.1 + 0.25 + 0.35 + 0.0 + 0.85 + 0.05


def _inputs():
    images = torch.eye(3, dtype=torch.float64, requires_grad=True)
    captions = S.t().clone().requires_grad_(True)
    return images, captions


def test_worked_example_values():
    images, captions = _inputs()
    assert torch.allclose(images @ captions.t(), S)
    assert VSELoss(0.2, max_violation=True)(images, captions).item() == pytest.approx(VSEPP)
    assert VSELoss(0.2, max_violation=False)(images, captions).item() == pytest.approx(VSE0)
    assert vse_loss("vsepp")(images, captions).item() == pytest.approx(VSEPP)
    assert vse_loss("vse0")(images, captions).item() == pytest.approx(VSE0)
    assert VSELoss(0.2, reduction="mean")(images, captions).item() == pytest.approx(VSEPP / 3)


def test_gradient_goes_through_the_hardest_negatives_only():
    images, captions = _inputs()
    VSELoss(0.2)(images, captions).backward()
    # dL/dS: +1 at each hardest negative, -1 on the positive of each violated query
    g = torch.zeros(3, 3, dtype=torch.float64)
    for i, j in [(0, 1), (1, 2), (2, 1)]:  # image -> text hardest captions
        g[i, j] += 1
        g[i, i] -= 1
    for i, j in [(2, 1), (1, 2)]:  # text -> image hardest images (columns 1 and 2)
        g[i, j] += 1
        g[j, j] -= 1
    assert torch.allclose(captions.grad, g.t())  # S = I @ captions^T
    assert torch.allclose(images.grad, g @ captions.detach())


def test_vse0_gradient_sums_every_violation():
    images, captions = _inputs()
    VSELoss(0.2, max_violation=False)(images, captions).backward()
    g = torch.zeros(3, 3, dtype=torch.float64)
    for i, j in [(0, 1), (1, 0), (1, 2), (2, 1)]:  # violated image -> text pairs
        g[i, j] += 1
        g[i, i] -= 1
    for i, j in [(0, 1), (2, 1), (1, 2)]:  # violated text -> image pairs
        g[i, j] += 1
        g[j, j] -= 1
    assert torch.allclose(captions.grad, g.t())


def test_groups_are_not_negatives_of_each_other():
    images, captions = _inputs()
    # pairs 0 and 1 share a group: (0, 1) and (1, 0) drop out of both directions
    loss = VSELoss(0.2)(images, captions, torch.tensor([0, 0, 1]))
    assert loss.item() == pytest.approx(0.0 + 0.15 + 0.35 + 0.0 + 0.45 + 0.05)
    same = VSELoss(0.2)(images, captions, torch.tensor([5, 5, 5]))
    assert same.item() == 0.0


def test_no_violation_no_loss_and_bad_options():
    images = torch.eye(3, dtype=torch.float64)
    assert VSELoss(0.2)(images, images).item() == 0.0  # s(i,i)=1, others 0: margin met
    with pytest.raises(ValueError):
        VSELoss(reduction="max")
    with pytest.raises(ValueError):
        vse_loss("triplet")

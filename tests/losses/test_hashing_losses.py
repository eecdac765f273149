"""Deep supervised hashing losses: values against formulas written out here, gradients,
training on separable synthetic data, CSQ centers, code packing against faiss."""

from __future__ import annotations

import itertools
import math

import faiss
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.linalg import hadamard

from cbir.losses.hashing import (
    CSQ,
    DCH,
    DLBHC,
    DPSH,
    DSH,
    HASHING_LOSSES,
    DLBHCHead,
    HashingLoss,
    HashNet,
    TripletTanh,
    get_hashing_loss,
    hamming_distances,
    hash_centers,
    pack_codes,
    sign_codes,
    unpack_codes,
)

BITS = 4
LABELS = torch.tensor([0, 0, 1, 2])


def small_u(seed: int = 0, n: int = 4, bits: int = BITS) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, bits, generator=g, dtype=torch.float64)


def same(i: int, j: int, labels: torch.Tensor = LABELS) -> bool:
    return bool(labels[i] == labels[j])


def ordered_pairs(n: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(n) for j in range(n) if i != j]


# ---------------------------------------------------------------- worked examples by hand


def test_dsh_hand_example() -> None:
    # bits 2, m = 4. d01 = 2 (similar: 1/2 * 2 = 1); d02 = d12 = 1 (dissimilar: 1/2 * 3).
    # mean over pairs = (1 + 1.5 + 1.5) / 3; r = (1, 1, 0); 2 * alpha * mean(r) = 0.04 / 3.
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    loss = DSH(2, alpha=0.01)(u, torch.tensor([0, 0, 1]))
    assert loss.item() == pytest.approx((4 + 0.04) / 3, rel=1e-6)


def test_dpsh_hand_example() -> None:
    # theta = 1/2 * 4 = 2 for the similar pair: log(1 + e^2) - 2 = log(1 + e^-2);
    # (u - sign u)^2 = (1, 1) per row: mean 1.
    u = torch.tensor([[2.0, 0.0], [2.0, 0.0]])
    loss = DPSH(2, eta=0.1)(u, torch.tensor([3, 3]))
    assert loss.item() == pytest.approx(math.log1p(math.exp(-2)) + 0.1, rel=1e-6)


def test_dch_hand_example() -> None:
    # Orthogonal pair: cos = 0, d = bits/2 = 1. Dissimilar: log(1 + gamma / 1).
    # Quantization: |u| = (1, 0) vs (1, 1): cos = 1/sqrt2, d = 1 - 1/sqrt2 for both rows.
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = DCH(2, gamma=20.0, lambda_=0.1)(u, torch.tensor([0, 1]))
    dq = 1 - 1 / math.sqrt(2)
    assert loss.item() == pytest.approx(math.log(21) + 0.1 * math.log1p(dq / 20), rel=1e-6)


def test_hashnet_step_beta() -> None:
    loss = HashNet(16)
    assert loss.alpha == pytest.approx(10 / 16)
    assert loss.step_beta(0) == pytest.approx(1.0)
    assert loss.step_beta(200) == pytest.approx(math.sqrt(2.0))
    assert loss.beta == pytest.approx(math.sqrt(2.0))


# ------------------------------------------------- values against transparent formulas


def ref_dsh(u: torch.Tensor, m: float, alpha: float) -> torch.Tensor:
    terms = []
    for i, j in ordered_pairs(len(u)):
        d = ((u[i] - u[j]) ** 2).sum()
        c = 0.5 * d if same(i, j) else 0.5 * torch.clamp(m - d, min=0)
        reg = alpha * ((u[i].abs() - 1).abs().sum() + (u[j].abs() - 1).abs().sum())
        terms.append(c + reg)
    return torch.stack(terms).mean()


def ref_dpsh(u: torch.Tensor, eta: float) -> torch.Tensor:
    terms = []
    for i, j in ordered_pairs(len(u)):
        theta = 0.5 * (u[i] * u[j]).sum()
        terms.append(torch.log(1 + torch.exp(theta)) - float(same(i, j)) * theta)
    return torch.stack(terms).mean() + eta * ((u - torch.sign(u)) ** 2).mean()


def ref_hashnet(u: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    h = torch.tanh(beta * u)
    pairs = ordered_pairs(len(u))
    n1 = sum(same(i, j) for i, j in pairs)
    n0 = len(pairs) - n1
    total = 0
    for i, j in pairs:
        a = alpha * (h[i] * h[j]).sum()
        s = float(same(i, j))
        w = len(pairs) / n1 if s else len(pairs) / n0
        total = total + w * (torch.log(1 + torch.exp(a)) - s * a)
    return total / len(pairs)


def ref_dch(u: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    bits = u.shape[1]

    def dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return bits / 2 * (1 - (a * b).sum() / (a.norm() * b.norm()))

    pairs = ordered_pairs(len(u))
    n1 = sum(same(i, j) for i, j in pairs)
    n0 = len(pairs) - n1
    total = 0
    for i, j in pairs:
        d = dist(u[i], u[j])
        s = float(same(i, j))
        w = len(pairs) / n1 if s else len(pairs) / n0
        total = total + w * (s * torch.log(d / gamma) + torch.log(1 + gamma / d))  # paper's Eq.
    quant = torch.stack([torch.log(1 + dist(r.abs(), torch.ones_like(r)) / gamma) for r in u])
    return total / len(pairs) + lam * quant.mean()


def ref_csq(u: torch.Tensor, centers: torch.Tensor, lam: float) -> torch.Tensor:
    h = torch.tanh(u)
    p = (h + 1) / 2
    t = (centers + 1) / 2
    bce = -(t * torch.log(p) + (1 - t) * torch.log(1 - p))
    return bce.mean() + lam * ((h.abs() - 1) ** 2).mean()


def ref_triplet_all(u: torch.Tensor, labels: torch.Tensor, m: float) -> torch.Tensor:
    h = torch.tanh(u)
    terms = []
    for a, p, n in itertools.product(range(len(u)), repeat=3):
        if a != p and same(a, p, labels) and not same(a, n, labels):
            dp = ((h[a] - h[p]) ** 2).sum()
            dn = ((h[a] - h[n]) ** 2).sum()
            terms.append(torch.clamp(m + dp - dn, min=0))
    return torch.stack(terms).mean()


def ref_triplet_hard(u: torch.Tensor, labels: torch.Tensor, m: float) -> torch.Tensor:
    h = torch.tanh(u)
    terms = []
    for a in range(len(u)):
        dps = [((h[a] - h[p]) ** 2).sum() for p in range(len(u)) if p != a and same(a, p, labels)]
        dns = [((h[a] - h[n]) ** 2).sum() for n in range(len(u)) if not same(a, n, labels)]
        if dps and dns:
            terms.append(torch.clamp(m + max(dps) - min(dns), min=0))
    return torch.stack(terms).mean()


def test_dsh_matches_formula() -> None:
    u = small_u(1)
    assert torch.allclose(DSH(BITS)(u, LABELS), ref_dsh(u, 2 * BITS, 0.01))
    assert torch.allclose(DSH(BITS, margin=3.0, alpha=0.5)(u, LABELS), ref_dsh(u, 3.0, 0.5))


def test_dpsh_matches_formula() -> None:
    u = small_u(2)
    assert torch.allclose(DPSH(BITS)(u, LABELS), ref_dpsh(u, 0.1))
    assert torch.allclose(DPSH(BITS, eta=2.0)(u, LABELS), ref_dpsh(u, 2.0))


def test_dpsh_stable_for_large_outputs() -> None:
    u = torch.full((2, BITS), 1e3)
    loss = DPSH(BITS)(u, torch.tensor([0, 1]))  # theta = 2e6: log(1+e^theta) - 0 = theta
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(0.5 * 4e6 + 0.1 * (1e3 - 1) ** 2, rel=1e-5)


def test_hashnet_matches_formula() -> None:
    u = small_u(3)
    loss = HashNet(BITS)
    assert torch.allclose(loss(u, LABELS), ref_hashnet(u, 10 / BITS, 1.0))
    loss.step_beta(1000)
    assert torch.allclose(loss(u, LABELS), ref_hashnet(u, 10 / BITS, loss.beta))


def test_dch_matches_paper_formula() -> None:
    u = small_u(4)
    assert torch.allclose(DCH(BITS)(u, LABELS), ref_dch(u, 20.0, 0.1))
    assert torch.allclose(DCH(BITS, gamma=2.0, lambda_=1.0)(u, LABELS), ref_dch(u, 2.0, 1.0))


def test_csq_matches_formula_with_hadamard_centers() -> None:
    u = small_u(5)
    loss = CSQ(BITS, 3)
    h = torch.tensor(hadamard(BITS), dtype=torch.float64)
    assert torch.equal(loss.centers, h[:3].float())
    assert torch.allclose(loss(u, LABELS), ref_csq(u, h[LABELS], 1e-4))


def test_csq_multilabel_center_is_sign_of_mean() -> None:
    loss = CSQ(8, 3)
    c = loss.centers
    y = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 1]])
    got = loss.target_centers(y)
    assert torch.equal(got[1], c[1])
    assert torch.equal(got[2], torch.sign(c.sum(0)))  # 3 centers: no ties
    ties = (c[0] + c[2]) == 0
    assert ties.any()
    assert torch.equal(got[0][~ties], torch.sign(c[0] + c[2])[~ties])
    assert torch.equal(got[0][ties], loss.tie_center[ties])
    u = small_u(6, n=3, bits=8)
    assert torch.allclose(loss(u, y), ref_csq(u, got.double(), 1e-4))


def test_triplet_tanh_matches_formula() -> None:
    u = small_u(7, n=6)
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    assert torch.allclose(TripletTanh(BITS)(u, labels), ref_triplet_all(u, labels, BITS / 2))
    hard = TripletTanh(BITS, mining="hard", margin=1.0)
    assert torch.allclose(hard(u, labels), ref_triplet_hard(u, labels, 1.0))


def test_dlbhc_is_cross_entropy_on_sigmoid_latent() -> None:
    u = small_u(8)
    loss = DLBHC(BITS, 3).double()
    logits = torch.sigmoid(u) @ loss.classifier.weight.t() + loss.classifier.bias
    ref = -torch.log_softmax(logits, 1)[torch.arange(4), LABELS].mean()
    assert torch.allclose(loss(u, LABELS), ref)
    head = DLBHCHead(6, BITS, 3)
    codes_logit, class_logits = head(torch.randn(5, 6))
    assert codes_logit.shape == (5, BITS) and class_logits.shape == (5, 3)
    assert torch.equal(
        DLBHCHead.codes(codes_logit), (torch.sigmoid(codes_logit) > 0.5).to(torch.uint8)
    )


def test_multi_hot_labels_give_same_pairs_as_ids() -> None:
    u = small_u(9)
    onehot = F.one_hot(LABELS, 3)
    for name in ["dsh", "dpsh", "hashnet", "dch", "triplet-tanh", "csq"]:
        loss = get_hashing_loss(name, BITS, 3)
        assert torch.allclose(loss(u, LABELS), loss(u, onehot)), name


# ------------------------------------------------------------------------ gradients


@pytest.mark.parametrize(
    "loss",
    [
        DSH(BITS),
        DPSH(BITS),
        HashNet(BITS, init_beta=0.7),
        DCH(BITS),
        CSQ(BITS, 3),
        TripletTanh(BITS, margin=1.0),
        TripletTanh(BITS, mining="hard", margin=1.0),
        DLBHC(BITS, 3).double(),
    ],
    ids=lambda x: type(x).__name__ + getattr(x, "mining", ""),
)
def test_gradcheck(loss: HashingLoss) -> None:
    u = small_u(10).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: loss(x, LABELS), (u,), eps=1e-6, atol=1e-5)


# ---------------------------------------------------------------------- memory bank


def test_memory_bank_pairs_batch_with_earlier_batches() -> None:
    u = small_u(11, n=8)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    loss = DPSH(BITS, eta=0.0, n_samples=8)
    loss(u[:4], labels[:4], torch.arange(4))
    ub = u[4:].clone().requires_grad_(True)
    got = loss(ub, labels[4:], torch.arange(4, 8))
    terms = []
    for i in range(4):
        for j in range(8):
            if j != 4 + i:
                other = u[j] if j < 4 else ub[j - 4].detach()
                theta = 0.5 * (ub[i] * other).sum()
                s = float(labels[4 + i] == labels[j])
                terms.append(torch.log(1 + torch.exp(theta)) - s * theta)
    assert torch.allclose(got, torch.stack(terms).mean())
    got.backward()
    assert ub.grad is not None and torch.isfinite(ub.grad).all()


# -------------------------------------------------------- training on separable data


def clustered(n_classes: int = 4, per_class: int = 40, dim: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    means = 3 * torch.randn(n_classes, dim, generator=g)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    x = means[labels] + torch.randn(len(labels), dim, generator=g)
    return x, labels


@pytest.mark.parametrize("name", sorted(HASHING_LOSSES))
def test_training_separates_classes_in_hamming(name: str) -> None:
    bits, n_classes = 16, 4
    x, labels = clustered(n_classes)
    torch.manual_seed(0)
    head = torch.nn.Linear(x.shape[1], bits)
    loss_fn = get_hashing_loss(name, bits, n_classes)
    opt = torch.optim.Adam(list(head.parameters()) + list(loss_fn.parameters()), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        first = loss_fn(head(x), labels).item()
    for step in range(60):
        if isinstance(loss_fn, HashNet):
            loss_fn.step_beta(step * 20)
        batch = torch.randperm(len(x), generator=gen)[:64]
        loss = loss_fn(head(x[batch]), labels[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        last = loss_fn(head(x), labels).item()
        codes = sign_codes(head(x))
    assert last < first
    ham = hamming_distances(pack_codes(codes), pack_codes(codes))
    same_class = (labels[:, None] == labels[None, :]).numpy()
    off_diag = ~np.eye(len(x), dtype=bool)
    intra = ham[same_class & off_diag].mean()
    inter = ham[~same_class].mean()
    assert intra + bits / 8 < inter, (intra, inter)


# ---------------------------------------------------------------- registry and errors


def test_registry_and_factory() -> None:
    assert set(HASHING_LOSSES) == {"dsh", "dpsh", "hashnet", "dch", "csq", "triplet-tanh", "dlbhc"}
    loss = get_hashing_loss("DSH", 16, 10, alpha=0.5)
    assert isinstance(loss, DSH) and loss.alpha == 0.5 and loss.margin == 32
    with pytest.raises(ValueError, match="unknown hashing loss"):
        get_hashing_loss("nope", 16, 10)
    with pytest.raises(ValueError, match="n_classes"):
        get_hashing_loss("csq", 16)


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="bits"):
        DSH(8)(torch.zeros(4, 4), LABELS)
    with pytest.raises(ValueError, match="labels"):
        DSH(4)(torch.zeros(4, 4), LABELS[:3])


# ------------------------------------------------------------------------ CSQ centers


@pytest.mark.parametrize("n_classes,bits", [(10, 16), (16, 16), (32, 16), (20, 32), (64, 32)])
def test_hadamard_centers_are_far_apart(n_classes: int, bits: int) -> None:
    c = hash_centers(n_classes, bits)
    assert c.shape == (n_classes, bits) and set(np.unique(c)) <= {-1, 1}
    d = (c[:, None, :] != c[None, :, :]).sum(-1)
    assert d[np.triu_indices(n_classes, 1)].min() >= bits / 2


def test_random_centers_deterministic_for_seed() -> None:
    a = hash_centers(50, 16, seed=3)
    assert np.array_equal(a, hash_centers(50, 16, seed=3))
    assert not np.array_equal(a, hash_centers(50, 16, seed=4))
    assert np.array_equal(a[:32], hash_centers(32, 16))  # H and -H first
    d = (a[:, None, :] != a[None, :, :]).sum(-1)[np.triu_indices(50, 1)]
    assert d.min() > 0
    c24 = hash_centers(10, 24, seed=1)  # no Hadamard matrix of order 24: all Bernoulli
    assert c24.shape == (10, 24) and np.array_equal(c24, hash_centers(10, 24, seed=1))
    loss = CSQ(16, 50, seed=3)
    assert torch.equal(loss.centers, torch.from_numpy(a).float())
    assert "centers" in loss.state_dict()


# ---------------------------------------------------------------------- binary codes


def test_sign_codes_maps_zero_to_plus_one() -> None:
    c = sign_codes(torch.tensor([[0.0, -0.5, 2.0, -0.0]]))
    assert c.dtype == np.int8 and c.tolist() == [[1, -1, 1, 1]]


def test_pack_unpack_round_trip_and_faiss_bit_order() -> None:
    rng = np.random.default_rng(0)
    codes = np.where(rng.random((50, 32)) < 0.5, 1, -1).astype(np.int8)
    packed = pack_codes(codes)
    assert packed.dtype == np.uint8 and packed.shape == (50, 4)
    assert np.array_equal(unpack_codes(packed), codes)
    assert np.array_equal(unpack_codes(packed, 32), codes)
    ref = np.zeros_like(packed)
    x = np.ascontiguousarray(codes, dtype=np.float32)
    faiss.real_to_binary(x.size, faiss.swig_ptr(x), faiss.swig_ptr(ref))
    assert np.array_equal(packed, ref)
    with pytest.raises(ValueError):
        pack_codes(codes[:, :12])


def test_hamming_distances_match_bruteforce_and_faiss() -> None:
    rng = np.random.default_rng(1)
    a = np.where(rng.random((30, 64)) < 0.5, 1, -1).astype(np.int8)
    b = np.where(rng.random((45, 64)) < 0.5, 1, -1).astype(np.int8)
    got = hamming_distances(pack_codes(a), pack_codes(b), chunk=7)
    brute = (a[:, None, :] != b[None, :, :]).sum(-1)
    assert np.array_equal(got, brute)
    index = faiss.IndexBinaryFlat(64)
    index.add(pack_codes(b))
    dist, ids = index.search(pack_codes(a), len(b))
    full = np.empty_like(got)
    np.put_along_axis(full, ids.astype(np.int64), dist, axis=1)
    assert np.array_equal(got, full)

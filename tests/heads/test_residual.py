"""Heads that start as the identity (cbir.heads.residual) on real Fashion-MNIST pixels:
before any step the embedding is the centred input, normalised (identity), or its
projection on the top principal axes (PCA); checkpoints of both head types load."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from cbir.errors import CbirError
from cbir.heads.base import l2_normalize
from cbir.heads.head import Head
from cbir.heads.learned import LearnedTransform
from cbir.heads.residual import ResidualHead, build_head, principal_axes
from cbir.train.data import TrainData
from cbir.train.methods.supervised import MetricHead
from cbir.train.registry import make_config
from tests.conftest import FASHION_ROOT, needs_fashion

pytestmark = needs_fashion


@pytest.fixture(scope="module")
def pixels() -> tuple[np.ndarray, np.ndarray]:
    """400 real Fashion-MNIST test images as 784-d float rows, and their labels."""
    from cbir.data.idx import read_idx

    x = read_idx(FASHION_ROOT / "t10k-images-idx3-ubyte.gz")[:400].reshape(400, -1)
    y = read_idx(FASHION_ROOT / "t10k-labels-idx1-ubyte.gz")[:400].astype(np.int64)
    return x.astype(np.float32) / 255.0, y


def data_of(x: np.ndarray, y: np.ndarray) -> TrainData:
    return TrainData(
        x=x,
        y=y,
        n_classes=10,
        query=x[:50],
        query_labels=y[:50],
        database=None,
        database_labels=None,
        protocol=None,
        fingerprint={"model": "pixels"},
    )


def untrained(x: np.ndarray, y: np.ndarray, **options: Any) -> LearnedTransform:
    """The transform of a metric head's checkpoint before its first step."""
    torch.manual_seed(0)
    cfg = make_config(method="triplet", miner="batch-hard", hidden=[64], **options)
    model = MetricHead(cfg, data_of(x, y), show=False)
    return LearnedTransform(model.checkpoint({}))


def test_the_identity_head_embeds_the_centred_feature_normalised(pixels):
    x, y = pixels
    t = untrained(x, y, dim=784, head="residual", head_init="identity", distill=1.0)
    want = l2_normalize(x - x.mean(0))
    assert t.head.config["type"] == "residual" and t.dim == 784
    np.testing.assert_allclose(t(x), want, atol=1e-5)


def test_the_pca_head_embeds_the_projection_on_the_principal_axes(pixels):
    x, y = pixels
    t = untrained(x, y, dim=32, head="residual", head_init="pca")
    xc = x - x.mean(0)
    axes = principal_axes(torch.from_numpy(x), 32).numpy()
    np.testing.assert_allclose(t(x), l2_normalize(xc @ axes.T), atol=1e-4)
    # the axes are orthonormal and ordered by variance
    np.testing.assert_allclose(axes @ axes.T, np.eye(32), atol=1e-4)
    var = (xc @ axes.T).var(0)
    assert np.all(np.diff(var) <= 1e-4)
    # a plain MLP head is not the identity: the residual head is what makes it so
    mlp = untrained(x, y, dim=32)
    assert not np.allclose(mlp(x) @ mlp(x).T, t(x) @ t(x).T, atol=1e-2)


def test_bad_residual_settings_are_clear_errors(pixels):
    x, y = pixels
    with pytest.raises(CbirError, match="--head-init identity needs --dim 784"):
        untrained(x, y, dim=32, head="residual", head_init="identity")
    with pytest.raises(CbirError, match="at most 784 dimensions"):
        untrained(x, y, dim=1000, head="residual")
    with pytest.raises(CbirError, match="unknown --head 'nope'"):
        untrained(x, y, dim=32, head="nope")


def test_build_head_reads_both_checkpoint_forms():
    old = Head(6, 4, [8]).config  # runs written before heads had a type
    assert "type" not in old and isinstance(build_head(old), Head)
    res = ResidualHead(6, 4, [8])
    again = build_head(res.config)
    assert isinstance(again, ResidualHead)
    again.load_state_dict(res.state_dict())
    with pytest.raises(CbirError, match="unknown head type 'x'"):
        build_head({**old, "type": "x"})


def test_the_whitened_pca_head_gives_unit_variances_on_the_pca_axes(pixels):
    x, y = pixels
    t = untrained(x, y, dim=16, head="residual", head_init="pca-whiten")
    xc = x - x.mean(0)
    plain = xc @ principal_axes(torch.from_numpy(x), 16).numpy().T
    white = t.outputs(x)
    var = white.var(0, ddof=1)
    np.testing.assert_allclose(var, 1.0, rtol=1e-3)  # whitened: unit variances
    # the same directions as the plain PCA, rescaled
    scale = white.std(0) / plain.std(0)
    np.testing.assert_allclose(white, plain * scale, atol=1e-3)


def test_collection_centring_fits_the_indexed_mean_and_records_it(pixels, tmp_path):
    """--center collection: the head centres on the mean of what it embeds (fit), as the
    frozen backbone's centring; the index records that mean in the transform spec and
    loads it back."""
    from cbir.heads.learned import load_learned, save_checkpoint

    x, y = pixels
    t = untrained(x[:200], y[:200], dim=784, head="residual", head_init="identity")
    c = untrained(
        x[:200], y[:200], dim=784, head="residual", head_init="identity", center="collection"
    )
    other = x[200:]  # a collection whose mean differs from the training images'
    np.testing.assert_allclose(c(other), t(other), atol=1e-5)  # not fitted: training mean
    c.fit(other)
    np.testing.assert_allclose(c(other), l2_normalize(other - other.mean(0)), atol=1e-5)
    assert not np.allclose(t(other), c(other), atol=1e-3)
    t.fit(other)  # a head centred on its training images ignores the collection
    np.testing.assert_allclose(t(other), l2_normalize(other - x[:200].mean(0)), atol=1e-5)

    save_checkpoint(tmp_path / "model.pt", c.ckpt)
    stored = LearnedTransform.from_path(tmp_path / "model.pt")
    stored.fit(other)
    spec = stored.spec()
    assert spec["center"] == "collection" and spec["fitted"]["images"] == 200
    save_checkpoint(tmp_path / f"model-{stored.digest}.pt", c.ckpt)
    again = load_learned(spec, tmp_path)
    again.fit(x[:10])  # already fitted: the recorded mean stays
    np.testing.assert_allclose(again(other), c(other), atol=1e-6)
    again.unfit()
    assert again.mean is None and "mean" not in again.spec()
    assert "center" not in t.spec()


def test_collection_centring_needs_a_residual_head(pixels):
    x, y = pixels
    with pytest.raises(CbirError, match="--center collection re-centres a residual head"):
        untrained(x, y, dim=32, head="mlp", center="collection")
    with pytest.raises(CbirError, match="unknown --center 'x'"):
        untrained(x, y, dim=32, head="residual", center="x")


def test_spectral_weighting_is_fitted_on_the_collection_stored_with_the_index(pixels, tmp_path):
    """--spectral P: the collection-centred outputs, in the principal axes of the
    collection's outputs, scaled by variance ** P; fitted with the mean, written beside
    the checkpoint in the index directory and read back from the spec. At P = 0.5 the
    cosine is that of the covariance inner product u_a C u_b (second-order similarity)."""
    from cbir.heads.learned import load_learned, save_checkpoint

    x, y = pixels
    opts = dict(dim=784, head="residual", head_init="identity", center="collection")
    plain = untrained(x[:200], y[:200], **opts)
    (tmp_path / "run").mkdir()
    save_checkpoint(
        tmp_path / "run" / "model.pt", untrained(x[:200], y[:200], **opts, spectral=0.5).ckpt
    )
    s = LearnedTransform.from_path(tmp_path / "run")
    other = x[200:]
    np.testing.assert_allclose(s(other), plain(other), atol=1e-5)  # not fitted: unweighted
    index = tmp_path / "index"
    index.mkdir()
    s.install(index)  # the checkpoint is copied; the map is written there once fitted
    s.fit(other)
    oc = (other - other.mean(0)).astype(np.float64)
    cov = oc.T @ oc / (len(oc) - 1)
    z = s(other).astype(np.float64)
    gram = oc @ cov @ oc.T
    norms = np.sqrt(np.diag(gram))
    np.testing.assert_allclose(z @ z.T, gram / np.outer(norms, norms), atol=1e-3)
    spec = s.spec()
    assert spec["spectral"] == 0.5 and (index / spec["spectral_map"]["file"]).exists()
    again = load_learned(spec, index)
    np.testing.assert_allclose(again(other), s(other), atol=1e-6)
    again.unfit()
    assert "spectral_map" not in again.spec()
    (index / spec["spectral_map"]["file"]).write_bytes(b"x")
    with pytest.raises(CbirError, match="spectral weighting file is damaged"):
        load_learned(spec, index)
    with pytest.raises(CbirError, match="--spectral weights the outputs"):
        untrained(x, y, dim=32, head="residual", spectral=0.5)


def test_reduce_on_the_collection_projects_on_its_principal_axes(pixels, tmp_path):
    """--reduce collection: the head stays in the feature space (from the identity) and its
    outputs are projected on the top --dim principal axes of the collection it embeds,
    fitted with the mean and stored with the index; unfitted, it refuses to embed."""
    from cbir.heads.learned import load_learned

    x, y = pixels
    opts = dict(head="residual", head_init="identity", center="collection", reduce="collection")
    r = untrained(x[:200], y[:200], dim=16, **opts)
    assert r.dim == 16 and r.head.proj.weight.shape == (784, 784)
    other = x[200:]
    with pytest.raises(CbirError, match="--reduce collection"):
        r(other)
    index = tmp_path / "index"
    index.mkdir()
    save = tmp_path / "run"
    save.mkdir()
    from cbir.heads.learned import save_checkpoint

    save_checkpoint(save / "model.pt", r.ckpt)
    s = LearnedTransform.from_path(save)
    s.install(index)
    s.fit(other)
    z = s(other)
    oc = (other - other.mean(0)).astype(np.float64)
    vals, vecs = np.linalg.eigh(oc.T @ oc)
    pca = l2_normalize((oc @ vecs[:, ::-1][:, :16]).astype(np.float32))
    assert z.shape == (len(other), 16)
    np.testing.assert_allclose(z @ z.T, pca @ pca.T, atol=1e-4)  # the PCA-16 cosines
    spec = s.spec()
    assert spec["reduce"] == 16 and (index / spec["spectral_map"]["file"]).exists()
    np.testing.assert_allclose(load_learned(spec, index)(other), z, atol=1e-6)
    # with a spectral power, the reduced coordinates are weighted as --spectral weights them
    w = untrained(x[:200], y[:200], dim=16, spectral=0.5, **opts)
    w.fit(other)
    lam = vals[::-1][:16]
    weighted = l2_normalize((oc @ vecs[:, ::-1][:, :16] * lam**0.5).astype(np.float32))
    np.testing.assert_allclose(w(other) @ w(other).T, weighted @ weighted.T, atol=1e-4)
    with pytest.raises(CbirError, match="--head-init identity"):
        untrained(x, y, dim=16, **{**opts, "head_init": "pca"})
    with pytest.raises(CbirError, match="--center collection"):
        untrained(x, y, dim=16, **{**opts, "center": "train"})


def test_the_cli_defaults_reduce_on_the_collection_unless_another_head_is_asked_for():
    """`cbir train` metric defaults: --reduce collection with the identity start; --head mlp,
    --center train or a PCA start reduce in the head; --reduce head alone starts from the
    whitened PCA."""
    import argparse

    from cbir.cli.train import _fit_reduce_defaults
    from cbir.train.config import METRIC_RECIPE

    def resolved(**given: Any) -> tuple[str, str]:
        args = argparse.Namespace(**{**METRIC_RECIPE, **given})
        _fit_reduce_defaults(args, set(given))
        return args.reduce, args.head_init

    assert resolved() == ("collection", "identity")
    assert resolved(head_init="identity") == ("collection", "identity")
    assert resolved(head="mlp")[0] == "head"
    assert resolved(center="train")[0] == "head"
    assert resolved(head_init="pca") == ("head", "pca")
    assert resolved(reduce="head") == ("head", "pca-whiten")
    assert resolved(reduce="collection", head_init="pca") == ("collection", "pca")

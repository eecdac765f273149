"""Retrieval pooling (GeM, R-MAC, multi-scale): the math against direct numpy loops, the
feature-map export, and ``cbir index --pooling`` recorded, reused and never mixed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cbir.backbones import pooling as P
from cbir.errors import CbirError


def _fmap(shape=(2, 5, 7, 7), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 6, shape).astype(np.float32)


def test_gem_is_the_generalised_mean_of_each_channel():
    x = _fmap((2, 3, 4, 5))
    got = P.gem(x, p=3.0)
    for n in range(2):
        for c in range(3):
            vals = [float(v) for v in x[n, c].ravel()]
            want = (sum(v**3 for v in vals) / len(vals)) ** (1 / 3)
            assert got[n, c] == pytest.approx(want, rel=1e-5)
    # p = 1 is average pooling; a large p approaches max pooling
    assert np.allclose(P.gem(x, p=1.0), x.mean(axis=(2, 3)), rtol=1e-5)
    assert np.allclose(P.gem(x, p=200.0), x.max(axis=(2, 3)), rtol=2e-2)


def test_rmac_regions_on_a_7x7_map_are_tolias_three_levels():
    want = [(0, 0, 7)]
    want += [(t, left, 4) for t in (0, 3) for left in (0, 3)]
    want += [(t, left, 3) for t in (0, 2, 4) for left in (0, 2, 4)]
    assert P.rmac_regions(7, 7) == want
    # a wide map gets extra regions along its long side, all inside the map
    regions = P.rmac_regions(4, 6)
    assert len(regions) > len(P.rmac_regions(4, 4))
    assert all(t >= 0 and left >= 0 and t + s <= 4 and left + s <= 6 for t, left, s in regions)


def test_rmac_sums_the_normalised_region_maxima():
    x = _fmap((2, 5, 7, 7), seed=1)
    got = P.rmac(x)
    want = np.zeros((2, 5))
    for t, left, s in P.rmac_regions(7, 7):
        v = x[:, :, t : t + s, left : left + s].reshape(2, 5, -1).max(axis=2).astype(np.float64)
        want += v / np.linalg.norm(v, axis=1, keepdims=True)
    assert np.allclose(got, want, rtol=1e-5)


def test_multi_scale_averages_the_unit_rows_and_scales_parse():
    a, b = _fmap((2, 4, 1, 1), 2)[:, :, 0, 0], _fmap((2, 4, 1, 1), 3)[:, :, 0, 0]
    got = P.combine_scales([a, b])
    na, nb = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in (a, b))
    assert np.allclose(got, (na + nb) / 2, rtol=1e-5)
    assert P.combine_scales([a]) is a
    assert P.parse_scales("multi") == (1.0, 0.7071, 0.5)
    assert P.parse_scales("1,0.5") == (1.0, 0.5)
    for bad in ("0.5,1", "1,2", "x"):
        with pytest.raises(CbirError, match="--scales"):
            P.parse_scales(bad)


def test_whitening_fitted_stored_and_reloaded_with_the_index(tmp_path: Path):
    from cbir.heads.frozen import FrozenTransform
    from cbir.heads.transform import load_transform

    rng = np.random.default_rng(0)
    rot = np.linalg.qr(rng.normal(size=(16, 16)))[0]
    feats = ((rng.normal(size=(2000, 16)) * np.linspace(0.5, 2, 16)) @ rot + 3).astype(np.float32)
    mean, w = P.learn_whitening(feats)
    white = (feats - mean) @ w
    # correlated, unequal channels; n >> d, so the shrinkage is slight: whitened ~ identity
    assert abs(np.cov(feats.T) - np.diag(np.diag(np.cov(feats.T)))).max() > 0.3
    assert np.allclose(np.cov(white.T), np.eye(16), atol=0.15)
    t = FrozenTransform(dim=16, center=True, whiten=True)
    t.install(tmp_path)
    t.fit(feats)
    spec = t.spec()
    assert spec["whiten"] and (tmp_path / spec["whitening"]["file"]).exists()
    again = load_transform(json.loads(json.dumps(spec)), tmp_path)
    assert np.array_equal(again(feats[:5]), t(feats[:5]))
    (tmp_path / spec["whitening"]["file"]).write_bytes(b"damaged")
    with pytest.raises(CbirError, match="damaged"):
        load_transform(spec, tmp_path)


def test_feature_map_export_is_a_separate_file_whose_mean_is_the_avg_feature(photos_dir):
    from cbir.backbones.efficientnet_lite import EfficientNetLite0, onnx_path

    assert onnx_path(64, feature_map=True) != onnx_path(64)
    plain = EfficientNetLite0(64)
    gem = EfficientNetLite0(64, pooling="gem")
    assert "pooling" not in plain.fingerprint and gem.fingerprint["pooling"] == "gem"
    images = sorted(photos_dir.glob("*.png"))[:3]
    from PIL import Image

    ims = [Image.open(p) for p in images]
    maps, logits = gem.feature_maps(gem.batch(ims))
    f, lg = plain.run(plain.batch(ims))
    assert np.allclose(maps[0].mean(axis=(2, 3)), f, atol=1e-4)
    assert np.allclose(logits, lg, atol=1e-3)
    assert np.allclose(gem.embed(ims), P.gem(maps[0]), atol=1e-6)
    ms = EfficientNetLite0(64, pooling="rmac", scales="multi")
    assert ms.fingerprint["scales"] == [1.0, 0.7071, 0.5]
    maps = ms.feature_maps(ms.batch(ims))[0]
    assert [m.shape[0] for m in maps] == [3, 3, 3]
    want = P.combine_scales([P.rmac(m) for m in maps])
    assert np.allclose(ms.embed(ims), want, atol=1e-5)


def test_cli_index_and_search_with_gem_pooling_refuses_mixing(photos_copy, tmp_path, capsys):
    from cbir.cli.main import main

    idx = tmp_path / "idx"
    args = ["index", str(photos_copy), "--index", str(idx), "--size", "64", "--json"]
    assert main([*args, "--pooling", "gem"]) == 0
    capsys.readouterr()
    query = sorted(photos_copy.rglob("*.jpg"))[0]
    assert main(["search", str(idx), str(query), "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    top = hits["results"][0] if isinstance(hits, dict) else hits[0]
    assert Path(top["path"]).name == query.name and top["score"] > 0.999
    assert main(["info", str(idx), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["backbone"]["pooling"] == "gem"
    # updating keeps it; another pooling or scales is refused, in a line naming the index
    assert main(args) == 0
    capsys.readouterr()
    for extra in (["--pooling", "avg"], ["--pooling", "rmac"], ["--scales", "multi"]):
        assert main([*args, *extra]) == 1
        err = capsys.readouterr().err
        assert str(idx) in err and "was built with" in err
    with pytest.raises(CbirError, match="efficientnet-lite0"):
        P.options("onnx", "gem", None)


def test_rmac_index_whitens_by_default_and_no_whiten_is_recorded(photos_copy, tmp_path, capsys):
    from cbir.cli.main import main
    from cbir.index.store import IndexStore

    for flag, whitened in ((), True), (("--no-whiten",), False):
        idx = tmp_path / f"idx{len(flag)}"
        args = ["index", str(photos_copy), "--index", str(idx), "--size", "64", "--json"]
        assert main([*args, "--pooling", "rmac", *flag]) == 0
        store = IndexStore.open(idx)
        spec = store.get_meta("transform")
        store.close()
        assert bool(spec.get("whiten")) is whitened
        assert any(idx.glob("whiten-*.npy")) is whitened
        capsys.readouterr()
        assert main([*args, "--whiten" if not whitened else "--no-whiten"]) == 1
        assert "was built with" in capsys.readouterr().err


def test_flip_descriptor_is_mirror_invariant_and_in_the_fingerprint(photos_dir):
    from PIL import Image, ImageOps

    from cbir.backbones.efficientnet_lite import EfficientNetLite0, describe

    ims = [Image.open(p).convert("RGB") for p in sorted(photos_dir.rglob("*.png"))[:3]]
    mirrors = [ImageOps.mirror(im) for im in ims]
    for pooling, scales in (("avg", None), ("gem", "multi"), ("rmac", None)):
        flip = EfficientNetLite0(64, pooling=pooling, scales=scales, flip=True)
        plain = EfficientNetLite0(64, pooling=pooling, scales=scales)
        a, b = flip.embed(ims), flip.embed(mirrors)
        assert np.allclose(a, b, atol=1e-5), pooling
        # without --flip a mirror is another descriptor; with it, the mean of both
        pa, pb = plain.embed(ims), plain.embed(mirrors)
        assert np.abs(P.l2n(pa) - P.l2n(pb)).max() > 1e-2, pooling
        assert np.allclose(a, P.combine_scales([pa, pb]) if scales is None else (pa + pb) / 2,
                           atol=1e-5)  # fmt: skip
        assert flip.fingerprint["flip"] is True and "flip" not in plain.fingerprint
        assert flip.fingerprint != plain.fingerprint and "flip" in describe(flip.fingerprint)
    # the default is the same graph and fingerprint as before the option
    assert "flip" not in EfficientNetLite0(64).fingerprint
    assert not EfficientNetLite0(64).map_sessions and EfficientNetLite0(64, flip=True).map_sessions


def test_cli_flip_index_recorded_mirror_found_and_never_mixed(photos_copy, tmp_path, capsys):
    from PIL import ImageOps

    from cbir.cli.main import main

    base = ["index", str(photos_copy), "--size", "64", "--json"]
    plain, flip = tmp_path / "plain", tmp_path / "flip"
    assert main([*base, "--index", str(plain)]) == 0
    capsys.readouterr()
    # an index built without --flip refuses it (and says how it was built)
    assert main([*base, "--index", str(plain), "--flip"]) == 1
    err = capsys.readouterr().err
    assert str(plain) in err and "was built with --no-flip" in err
    assert main([*base, "--index", str(plain), "--no-flip"]) == 0  # the same: an update
    capsys.readouterr()
    assert main([*base, "--index", str(flip), "--pooling", "gem", "--flip"]) == 0
    capsys.readouterr()
    assert main(["info", str(flip), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["backbone"]["flip"] is True
    assert main(["info", str(flip)]) == 0
    assert "flip-averaged" in capsys.readouterr().out
    assert main([*base, "--index", str(flip), "--no-flip"]) == 1
    assert "was built with --flip" in capsys.readouterr().err
    # search uses the index's setting: a mirrored photo finds its source at score ~1
    src = sorted(photos_copy.rglob("*.png"))[0]
    from PIL import Image

    query = tmp_path / "mirror.png"
    ImageOps.mirror(Image.open(src).convert("RGB")).save(query)
    for idx, exact in ((flip, True), (plain, False)):
        assert main(["search", str(idx), str(query), "-k", "3", "--json"]) == 0
        hits = json.loads(capsys.readouterr().out)
        top = hits["results"][0] if isinstance(hits, dict) else hits[0]
        assert (Path(top["path"]).name == src.name and top["score"] > 0.9999) is exact
    with pytest.raises(CbirError, match="efficientnet-lite0"):
        P.options("onnx", None, None, True)


def test_power_normalisation_is_the_signed_root_of_the_pooled_descriptor(photos_dir):
    """--power P: sign(x)|x|^P of the final pooled descriptor, L2-normalised (Perronnin et
    al., ECCV 2010); recorded in the fingerprint, the default leaves it out."""
    from PIL import Image

    from cbir.backbones.efficientnet_lite import EfficientNetLite0, describe

    ims = [Image.open(p).convert("RGB") for p in sorted(photos_dir.rglob("*.png"))[:3]]
    for pooling, scales, flip in (("rmac", "multi", True), ("gem", None, False)):
        plain = EfficientNetLite0(64, pooling=pooling, scales=scales, flip=flip)
        powered = EfficientNetLite0(64, pooling=pooling, scales=scales, flip=flip, power=0.5)
        x, y = plain.embed(ims), powered.embed(ims)
        want = np.sign(x) * np.sqrt(np.abs(x))
        want /= np.linalg.norm(want, axis=1, keepdims=True)
        assert np.allclose(y, want, atol=1e-5), pooling
        assert np.allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-5)
        assert np.abs(P.l2n(x) - y).max() > 1e-2  # it changes the descriptor
        assert powered.fingerprint["power"] == 0.5 and "power" not in plain.fingerprint
        assert "power 0.5" in describe(powered.fingerprint)
    assert EfficientNetLite0(64, power=0.5).map_sessions  # the map export pools it
    assert "power" not in EfficientNetLite0(64, power=1).fingerprint
    for bad in ("0", "1.5", "x", "-1"):
        with pytest.raises(CbirError, match="--power must be"):
            P.parse_power(bad)


def test_cli_power_index_recorded_and_never_mixed(photos_copy, tmp_path, capsys):
    from cbir.cli.main import main

    base = ["index", str(photos_copy), "--size", "64", "--json"]
    idx = tmp_path / "pow"
    assert main([*base, "--index", str(idx), "--pooling", "rmac", "--power", "0.5"]) == 0
    capsys.readouterr()
    assert main(["info", str(idx), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["backbone"]["power"] == 0.5
    assert main(["info", str(idx)]) == 0
    assert "power 0.5" in capsys.readouterr().out
    assert main([*base, "--index", str(idx), "--power", "0.5"]) == 0  # the same: an update
    capsys.readouterr()
    assert main([*base, "--index", str(idx), "--power", "1"]) == 1
    err = capsys.readouterr().err
    assert str(idx) in err and "was built with --power 0.5" in err
    plain = tmp_path / "plain"
    assert main([*base, "--index", str(plain)]) == 0
    capsys.readouterr()
    assert main([*base, "--index", str(plain), "--power", "0.5"]) == 1
    assert "was built with --power 1" in capsys.readouterr().err
    # search embeds queries the index's way: an indexed photo finds itself at score ~1
    src = sorted(photos_copy.rglob("*.png"))[0]
    assert main(["search", str(idx), str(src), "-k", "1", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    top = hits["results"][0] if isinstance(hits, dict) else hits[0]
    assert Path(top["path"]).name == src.name and top["score"] > 0.9999

"""Backbones by name: an ONNX file written here, a class registered here, indexed and
searched through the CLI; an index refuses another backbone with a clear message."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cbir.backbones import registry
from cbir.backbones.base import Backbone, ImageBackbone, no_logits
from cbir.backbones.onnx_file import IMAGENET_MEAN, OnnxFileBackbone
from cbir.backbones.preprocess import Preprocess
from cbir.cli import main
from cbir.errors import CbirError
from cbir.index.store import IndexStore
from cbir.pipeline import index_folder
from cbir.search.searcher import Searcher


def write_onnx(
    path: Path, seed: int = 0, size: int | str = 32, meta: dict[str, str] | None = None
) -> Path:
    """A tiny image-embedding model: conv 3x3 (stride 2) + ReLU, conv 3x3 + ReLU, global
    average pooling, flatten -> 24 features. Random weights, fixed by ``seed``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.5, (16, 3, 3, 3)).astype(np.float32)
    b1 = rng.normal(0, 0.1, 16).astype(np.float32)
    w2 = rng.normal(0, 0.3, (24, 16, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["images", "w1", "b1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["features"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", 3, size, size])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", 24])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in (meta or {}).items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return write_onnx(tmp_path / "tiny.onnx")


def test_onnx_backbone_fingerprint_and_features(model, tmp_path):
    bb = registry.open_backbone(f"onnx:{model}")
    assert isinstance(bb, Backbone) and isinstance(bb, OnnxFileBackbone)
    fp = bb.fingerprint
    assert fp["backbone"] == "onnx" and fp["dim"] == bb.dim == 24 and bb.size == 32
    assert len(fp["sha256"]) == 64 and fp["preprocess"]["mean"] == list(IMAGENET_MEAN)
    imgs = np.random.default_rng(0).integers(0, 256, (3, 50, 70, 3), dtype=np.uint8)
    f = bb.embed(list(imgs))
    assert f.shape == (3, 24) and f.dtype == np.float32 and np.isfinite(f).all()
    assert getattr(bb, "classify", None) is None and bb.embed_text is None
    # the same computation in numpy: (x / 255 - mean) / std on NCHW floats
    x = bb.batch(list(imgs)).transpose(0, 3, 1, 2).astype(np.float64) / 255
    m, s = np.array(IMAGENET_MEAN)[None, :, None, None], np.array(bb.std)[None, :, None, None]
    (ref,) = bb.session.run(None, {"images": ((x - m) / s).astype(np.float32)})
    np.testing.assert_allclose(f, ref, rtol=1e-4, atol=1e-5)
    # normalisation from the model's metadata_props, options win over it
    meta = write_onnx(
        tmp_path / "meta.onnx", meta={"mean": "0.5,0.5,0.5", "std": "[0.25, 0.25, 0.25]"}
    )
    assert registry.open_backbone(f"onnx:{meta}").fingerprint["preprocess"]["std"] == [0.25] * 3
    given = registry.open_backbone(f"onnx:{meta}", mean=[0.1, 0.2, 0.3])
    assert given.mean == (0.1, 0.2, 0.3) and given.std == (0.25, 0.25, 0.25)
    # another file: another fingerprint
    other = write_onnx(tmp_path / "other.onnx", seed=1)
    assert registry.open_backbone(f"onnx:{other}").fingerprint != fp


def test_onnx_backbone_refuses_bad_input(model, tmp_path):
    with pytest.raises(CbirError, match="no such ONNX file"):
        registry.open_backbone(f"onnx:{tmp_path / 'missing.onnx'}")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(CbirError, match="not an ONNX model"):
        registry.open_backbone(f"onnx:{bad}")
    with pytest.raises(CbirError, match="takes 32 px inputs, not --size 64"):
        registry.open_backbone(f"onnx:{model}", size=64)
    with pytest.raises(CbirError, match="unknown backbone 'nope'"):
        registry.open_backbone("nope")
    free = registry.open_backbone(f"onnx:{write_onnx(tmp_path / 'free.onnx', size='s')}", size=40)
    assert free.size == 40 and free.embed(np.zeros((1, 40, 40, 3), np.uint8)).shape == (1, 24)


def test_cli_index_and_search_with_onnx_backbone(capsys, model, photos_dir, tmp_path):
    idx = tmp_path / "index"
    code, out, err = run(
        capsys,
        "index",
        str(photos_dir),
        "--index",
        str(idx),
        "--backbone",
        f"onnx:{model}",
        "--json",
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["indexed"] == summary["found"] == summary["total"] > 10
    store = IndexStore.open(idx)
    try:
        cfg = store.config
    finally:
        store.close()
    assert cfg["backbone_spec"] == f"onnx:{model.resolve()}" and cfg["feature_dim"] == 24
    assert cfg["backbone"] == registry.open_backbone(f"onnx:{model}").fingerprint
    queries = sorted(photos_dir.rglob("*.jpg"))[:3] + sorted(photos_dir.rglob("*.png"))[:2]
    for q in queries:
        code, out, err = run(capsys, "search", str(idx), str(q), "-k", "3", "--json")
        assert code == 0, err
        top = json.loads(out)["results"][0]
        assert top["path"] == str(q) and top["score"] == pytest.approx(1.0, abs=1e-4)
    code, out, err = run(capsys, "info", str(idx))
    assert code == 0 and f"backbone:     onnx (weights {cfg['backbone']['sha256'][:12]}" in out, err
    # an update keeps (and needs no) --backbone
    code, out, err = run(capsys, "index", str(photos_dir), "--index", str(idx), "--json")
    assert code == 0 and json.loads(out)["unchanged"] == summary["total"], err
    s = Searcher(idx)  # search uses the backbone the index recorded
    try:
        assert s.backbone.fingerprint == cfg["backbone"]
    finally:
        s.close()


def test_index_refuses_another_backbone(capsys, model, photos_dir, tmp_path):
    idx = tmp_path / "onnx-index"
    assert main(["index", str(photos_dir), "--index", str(idx), "--backbone", f"onnx:{model}"]) == 0
    capsys.readouterr()
    other = write_onnx(tmp_path / "other.onnx", seed=1)
    for spec in ("efficientnet-lite0", f"onnx:{other}"):
        code, _, err = run(
            capsys, "index", str(photos_dir), "--index", str(idx), "--backbone", spec
        )
        assert code == 1 and "was built with the onnx backbone" in err, err
        assert f"not --backbone {registry.normalize_spec(spec)}" in err and "Traceback" not in err
    # the same model under another path is the same backbone
    copy = shutil.copy(model, tmp_path / "copy.onnx")
    assert main(["index", str(photos_dir), "--index", str(idx), "--backbone", f"onnx:{copy}"]) == 0
    capsys.readouterr()
    # the model file changed since: search and update refuse it
    write_onnx(model, seed=2)
    q = str(sorted(photos_dir.glob("*.jpg"))[0])
    for argv in (["search", str(idx), q], ["index", str(photos_dir), "--index", str(idx)]):
        code, _, err = run(capsys, *argv)
        assert code == 1 and "was built with the onnx backbone (sha256" in err, err
        assert "Re-index into a new --index directory" in err
    # an efficientnet index refuses an ONNX model
    eff = tmp_path / "eff-index"
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(q, one)
    assert main(["index", str(one), "--index", str(eff), "--size", "64"]) == 0
    capsys.readouterr()
    code, _, err = run(
        capsys, "index", str(one), "--index", str(eff), "--backbone", f"onnx:{other}"
    )
    assert code == 1 and "was built with the efficientnet-lite0 backbone (ImageNet weights" in err


class TinyImages(ImageBackbone):
    """Tiny images (Torralba, Fergus & Freeman, "80 million tiny images", TPAMI 2008): the
    image shrunk to ``side x side`` pixels, centred, as its feature."""

    name = "tiny-images"

    def __init__(self, side: int = 8, threads: int | None = None) -> None:
        self.preprocess = Preprocess(size=side, mode="squash")
        self.dim = side * side * 3

    @property
    def fingerprint(self) -> dict:
        return {"backbone": self.name, "dim": self.dim, "preprocess": self.preprocess.to_dict()}

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f = np.asarray(batch, np.float32).reshape(len(batch), -1)
        return f - f.mean(1, keepdims=True), no_logits(len(batch))


def test_a_new_backbone_is_one_class_and_one_register_line(capsys, photos_dir, tmp_path):
    registry.register("tiny-images", TinyImages)
    try:
        idx = tmp_path / "tiny"
        summary = index_folder(photos_dir, idx, backbone="tiny-images", progress=False)
        assert summary.indexed == summary.found > 10 and not summary.failed
        q = sorted(photos_dir.rglob("*.png"))[1]
        code, out, err = run(capsys, "search", str(idx), str(q), "-k", "2", "--json")
        assert code == 0 and json.loads(out)["results"][0]["path"] == str(q), err
        s = Searcher(idx)
        try:
            assert s.backbone.fingerprint == TinyImages().fingerprint
        finally:
            s.close()
        with pytest.raises(CbirError, match="was built with the tiny-images backbone"):
            index_folder(photos_dir, idx, backbone="efficientnet-lite0", progress=False)
    finally:
        registry._REGISTRY.pop("tiny-images")
    code, _, err = run(capsys, "search", str(idx), str(q))
    assert code == 1 and "unknown backbone 'tiny-images'" in err

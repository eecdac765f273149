"""The torch-free EfficientNet-Lite0 export: checkpoint reader and ONNX graph vs torch."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbir.backbones import efficientnet_lite as eff
from cbir.backbones.efficientnet_onnx import export_bytes
from cbir.backbones.preprocess import Preprocess
from cbir.backbones.session import cpu_session
from cbir.backbones.torch_checkpoint import load_state_dict
from cbir.errors import CbirError


def _batch(photos_dir: Path, size: int) -> np.ndarray:
    pre = Preprocess(size=size)
    files = sorted(photos_dir.rglob("*.*"))
    return np.stack([pre(Image.open(f).convert("RGB")) for f in files])


def _run(onnx_bytes: bytes, tmp_path: Path, batch: np.ndarray, name: str):
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(onnx_bytes)
    return cpu_session(path, 1).run(None, {"images": batch})


def _close(ours: np.ndarray, ref: np.ndarray) -> float:
    """Max abs difference relative to the reference's largest magnitude."""
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def test_legacy_checkpoint_reads_as_torch_loads_it() -> None:
    torch = pytest.importorskip("torch")
    ours = load_state_dict(eff.weights_path())
    ref = torch.load(eff.weights_path(), map_location="cpu", weights_only=True)
    assert list(ours) == list(ref)
    for k, v in ref.items():
        assert ours[k].dtype == v.numpy().dtype and np.array_equal(ours[k], v.numpy()), k


def test_zip_checkpoint_strides_offsets_and_dtypes(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = {
        "t": base.t(),  # a strided view
        "s": base[1:, 2:],  # an offset into a shared storage
        "i": torch.tensor(7, dtype=torch.int64),
        "h": torch.linspace(-2, 2, 5, dtype=torch.float16),
        "b": torch.tensor([1.5, -3.0], dtype=torch.bfloat16),
    }
    torch.save(state, tmp_path / "sd.pt")
    ours = load_state_dict(tmp_path / "sd.pt")
    for k, v in state.items():
        np.testing.assert_array_equal(ours[k], v.float().numpy() if k == "b" else v.numpy())
    assert ours["h"].dtype == np.float16 and ours["i"].shape == ()


def test_a_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("echo pwned",))

    bad = tmp_path / "bad.pt"
    bad.write_bytes(
        b"".join(
            pickle.dumps(x, protocol=2)
            for x in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}, {"w": Evil()})
        )
    )
    with pytest.raises(CbirError, match=r"bad\.pt: not a readable torch state dict.*os"):
        load_state_dict(bad)


@pytest.mark.parametrize("size", [224, 64])
def test_graph_matches_the_torch_export(photos_dir: Path, tmp_path: Path, size: int) -> None:
    """Same features and logits as torch.onnx.export of the PyTorch model, on real photos."""
    pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite_pytorch")
    batch = _batch(photos_dir, size)
    pre = Preprocess(size=size)
    ours = _run(export_bytes(eff.state_dict(), size, pre.mean, pre.std), tmp_path, batch, "np")
    ref = _run(eff.torch_export_bytes(size), tmp_path, batch, "torch")
    for o, r in zip(ours, ref, strict=True):
        assert o.shape == r.shape
        assert _close(o, r) <= 1e-5, _close(o, r)


def test_finetuned_weights_export_without_torch_as_torch_does(
    photos_dir: Path, tmp_path: Path
) -> None:
    """A fine-tuned state dict (torch.save's zip format) exports to the torch export's model."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite_pytorch")
    model = eff.load_torch_model()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1 + 0.1 * torch.randn(p.shape, generator=g))
        model._blocks[3]._bn1.running_mean.add_(0.05)
    weights = tmp_path / "backbone.pt"
    torch.save(model.state_dict(), weights)
    batch = _batch(photos_dir, 64)
    pre = Preprocess(size=64)
    sd = eff.state_dict(weights)
    ours = _run(export_bytes(sd, 64, pre.mean, pre.std), tmp_path, batch, "np")
    ref = _run(eff.torch_export_bytes(64, weights), tmp_path, batch, "torch")
    for o, r in zip(ours, ref, strict=True):
        assert _close(o, r) <= 1e-5, _close(o, r)
    frozen = _run(export_bytes(eff.state_dict(), 64, pre.mean, pre.std), tmp_path, batch, "f")
    assert np.abs(frozen[0] - ours[0]).max() > 1e-2  # other weights, other features


def test_cached_export_has_its_own_name_and_the_fingerprint_is_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The torch export's file name is never reused for the graph writer's bytes; the
    fingerprint (the weights file's digest) is the same, so existing indexes stay valid."""
    monkeypatch.setenv("CBIR_CACHE", str(tmp_path / "cache"))
    path = eff.onnx_path(32)
    assert path.name == f"efficientnet-lite0-{eff.weights_digest()}-32px-u8-opset17-g1.onnx"
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    bb = eff.EfficientNetLite0(size=32, threads=1)
    assert bb.fingerprint["weights"] == eff.file_digest(eff.weights_path()) == "579344248a93"
    assert bb.run(np.zeros((2, 32, 32, 3), np.uint8))[0].shape == (2, 1280)


def test_a_file_that_is_not_efficientnet_weights_is_refused(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    torch.save({"w": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CbirError, match=r"other\.pt: not efficientnet-lite0 weights.*--finetune"):
        eff._export_onnx(tmp_path / "x.onnx", 32, tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CbirError, match=r"junk\.pt: not fine-tuned efficientnet-lite0 weights"):
        eff.state_dict(tmp_path / "junk.pt")

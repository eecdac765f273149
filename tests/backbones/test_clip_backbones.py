"""Image-text backbones (issue 18): ``onnx-clip:DIR`` (a tiny CLIP-type model written here)
and ``open_clip:`` / ``timm:`` (random weights) through ``cbir index`` and ``cbir search
--text``: text -> image search, the fingerprint, refusals of another model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cbir.backbones.registry import backbone_for, open_backbone
from cbir.cli import main
from cbir.errors import CbirError
from cbir.index.store import IndexStore
from cbir_testing.tiny_clip import COLOURS, write_colour_images, write_tiny_clip


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def text_hits(capsys, idx: Path, text: str, *extra: str) -> list[dict]:
    code, out, err = run(capsys, "search", str(idx), "--text", text, "--json", *extra)
    assert code == 0, err
    return json.loads(out)["results"]


@pytest.fixture
def collection(photos_dir: Path, tmp_path: Path) -> Path:
    """The real photos plus one plain picture per colour word."""
    root = tmp_path / "photos"
    shutil.copytree(photos_dir, root)
    write_colour_images(root / "plain")
    return root


@pytest.fixture
def clip_index(capsys, collection: Path, tmp_path: Path) -> tuple[Path, Path]:
    model = write_tiny_clip(tmp_path / "tiny-clip")
    idx = tmp_path / "idx"
    code, _, err = run(
        capsys, "index", str(collection), "--index", str(idx), "--backbone", f"onnx-clip:{model}"
    )
    assert code == 0, err
    return model, idx


def test_text_finds_the_image_through_the_backbone(capsys, clip_index):
    model, idx = clip_index
    for word in COLOURS:
        hits = text_hits(capsys, idx, word)  # --text-mode auto picks the backbone
        assert Path(hits[0]["path"]).name == f"plain-{word}.png", (word, hits[:3])
        assert hits[0]["source"] == "backbone"
        assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)  # the same vector
    # upper case goes through the tokenizer's normaliser; --where narrows the candidates
    hits = text_hits(capsys, idx, "BLUE", "--text-mode", "backbone", "-k", "3")
    assert Path(hits[0]["path"]).name == "plain-blue.png" and len(hits) == 3
    hits = text_hits(capsys, idx, "red", "--where", "not path contains 'plain'", "-k", "4")
    assert len(hits) == 4 and all("plain" not in h["path"] for h in hits)
    # the image search of the same index still works (query: the red picture itself)
    code, out, _ = run(capsys, "search", str(idx), str(idx.parent / "photos/plain/plain-red.png"))
    assert code == 0 and "plain-red.png" in out.splitlines()[1]


def test_fingerprint_records_both_towers_and_no_centring(clip_index):
    model, idx = clip_index
    store = IndexStore.open(idx)
    try:
        fp = store.config["backbone"]
        assert fp["backbone"] == "onnx-clip" and fp["dim"] == 8
        assert set(fp["text"]) == {"sha256", "tokenizer", "context_length"}
        assert store.config["backbone_spec"] == f"onnx-clip:{model.resolve()}"
        assert store.get_meta("transform")["center"] is False  # text shares the raw space
        bb = backbone_for(store)
        assert bb.fingerprint == fp
    finally:
        store.close()


def test_another_model_is_refused(capsys, clip_index, collection, tmp_path):
    model, idx = clip_index
    other = write_tiny_clip(tmp_path / "other-clip", seed=1)
    code, _, err = run(
        capsys, "index", str(collection), "--index", str(idx), "--backbone", f"onnx-clip:{other}"
    )
    assert code == 1
    assert "was built with the onnx-clip backbone" in err and "another --index" in err
    # the text model changed in place: the search says so instead of mixing spaces
    write_tiny_clip(tmp_path / "changed", seed=2)
    shutil.copy(tmp_path / "changed" / "text.onnx", model / "text.onnx")
    code, _, err = run(capsys, "search", str(idx), "--text", "red")
    assert code == 1 and "Re-index into a new --index directory" in err


def test_image_only_index_refuses_backbone_text_mode(capsys, small_index):
    _, idx = small_index
    code, _, err = run(capsys, "search", str(idx), "--text", "red", "--text-mode", "backbone")
    assert code == 1
    assert "embeds images only" in err and "onnx-clip:DIR" in err


def test_a_folder_without_the_layout_is_refused(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(CbirError, match="no image model"):
        open_backbone(f"onnx-clip:{tmp_path / 'm'}")
    write_tiny_clip(tmp_path / "t")
    (tmp_path / "t" / "tokenizer.json").unlink()
    with pytest.raises(CbirError, match="no tokenizer.json"):
        open_backbone(f"onnx-clip:{tmp_path / 't'}")


# ------------------------------------------------ open_clip and timm (PyTorch)
def _library(name: str):
    """The library, or a skip that gives the measured import error (docs/backbones.md:
    PyPI's torchvision is a CUDA build that does not load beside a CPU-only torch)."""
    try:
        return __import__(name)
    except Exception as e:  # noqa: BLE001 - torchvision raises RuntimeError, not ImportError
        pytest.skip(
            f"{name} does not import here: {type(e).__name__}: {str(e)[-200:]}"
            " (docs/backbones.md#open_clip-and-timm-need-a-torchvision-that-loads)"
        )


def test_open_clip_random_weights_end_to_end(capsys, collection, tmp_path):
    open_clip = _library("open_clip")
    import torch

    idx = tmp_path / "idx"
    spec = "open_clip:ViT-S-32"
    code, _, err = run(capsys, "index", str(collection), "--index", str(idx), "--backbone", spec)
    assert code == 0, err
    hits = text_hits(capsys, idx, "a photo of a cat", "-k", "5")
    assert len(hits) == 5 and all(h["source"] == "backbone" for h in hits)
    store = IndexStore.open(idx)
    try:
        fp = store.config["backbone"]
        assert (fp["model"], fp["weights"], fp["dim"]) == ("ViT-S-32", "random:seed0", 384)
        bb = backbone_for(store)  # the seeded random model again: the same fingerprint
        feats = store.features([hits[0]["id"]])
    finally:
        store.close()
    # the backbone's text embedding is open_clip's own encode_text
    torch.manual_seed(0)
    ref = open_clip.create_model("ViT-S-32", pretrained=None).eval()
    with torch.no_grad():
        want = ref.encode_text(open_clip.get_tokenizer("ViT-S-32")(["a photo of a cat"]))
    got = bb.embed_text(["a photo of a cat"])
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-5)
    cos = float((got[0] / np.linalg.norm(got[0])) @ (feats[0] / np.linalg.norm(feats[0])))
    assert hits[0]["score"] == pytest.approx(cos, abs=1e-4)
    # another model into this index is refused
    code, _, err = run(
        capsys, "index", str(collection), "--index", str(idx), "--backbone", "open_clip:ViT-B-32"
    )
    assert code == 1 and "was built with the open_clip backbone (ViT-S-32" in err


def test_open_clip_exports_to_onnx_clip(collection, tmp_path):
    """The export's three files give open_clip's token ids and embeddings on onnxruntime."""
    open_clip = _library("open_clip")
    from PIL import Image

    from cbir.backbones.clip_export import export_open_clip

    out = export_open_clip("ViT-S-32", tmp_path / "exported")
    onnx_bb = open_backbone(f"onnx-clip:{out}")
    torch_bb = open_backbone("open_clip:ViT-S-32")
    texts = ["a photo of a cat", "Two dogs, running!", "café crème", "x " * 120, "日本語 🐶"]
    ids, _ = onnx_bb.tokenize(texts)
    np.testing.assert_array_equal(ids, open_clip.get_tokenizer("ViT-S-32")(texts).numpy())
    want = torch_bb.embed_text(texts)
    np.testing.assert_allclose(onnx_bb.embed_text(texts), want, atol=1e-4 * np.abs(want).max())
    batch = torch_bb.batch([Image.open(p) for p in sorted(collection.rglob("*.png"))[:4]])
    want = torch_bb.run(batch)[0]
    np.testing.assert_allclose(onnx_bb.run(batch)[0], want, atol=1e-4 * np.abs(want).max())
    assert onnx_bb.preprocess == torch_bb.preprocess  # size, crop, bicubic


def test_timm_random_weights_index_and_search(capsys, collection, tmp_path):
    _library("timm")
    idx = tmp_path / "idx"
    code, _, err = run(
        capsys, "index", str(collection), "--index", str(idx), "--backbone", "timm:resnet18"
    )
    assert code == 0, err
    query = collection / "plain" / "plain-green.png"
    code, out, err = run(capsys, "search", str(idx), str(query), "--json")
    assert code == 0, err
    assert Path(json.loads(out)["results"][0]["path"]).name == "plain-green.png"
    code, _, err = run(capsys, "search", str(idx), "--text", "green", "--text-mode", "backbone")
    assert code == 1 and "embeds images only" in err

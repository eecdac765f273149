"""``efficientnet-lite0-int8``: a deterministic build, a lock between processes, indexed and
searched through the CLI, refused when mixed with the fp32 backbone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

from cbir.backbones import efficientnet_int8 as int8
from cbir.backbones import efficientnet_lite, registry
from cbir.cli import main
from cbir.index.store import IndexStore
from cbir.utils import sha256_file

SIZE = 32  # small inputs keep the builds quick; the recipe is the same at every size


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_calibration_set_is_fixed():
    a, b = int8.calibration_images(SIZE), int8.calibration_images(SIZE)
    assert a.dtype == np.uint8 and a.shape[1:] == (SIZE, SIZE, 3)
    assert len(a) >= 26 * (1 + int8.CROPS_PER_PHOTO) + int8.FASHION_IMAGES
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, int8.calibration_images(SIZE, seed=1))


def test_two_builds_are_bit_identical(tmp_path):
    fp32 = efficientnet_lite.onnx_path(SIZE)
    images = int8.calibration_images(SIZE)
    one, two = tmp_path / "one.onnx", tmp_path / "two.onnx"
    int8.quantize(fp32, one, images)
    int8.quantize(fp32, two, int8.calibration_images(SIZE))
    assert one.read_bytes() == two.read_bytes()
    # and it is a quantised model: QDQ pairs, int8 convolution weights
    import onnx

    model = onnx.load(one)
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) > 50


def test_int8_features_follow_fp32(photos_dir):
    from PIL import Image

    assert int8.NAME in registry.names()
    q = registry.open_backbone(int8.NAME, size=SIZE)
    f = registry.open_backbone(registry.DEFAULT, size=SIZE)
    assert q.dim == f.dim == 1280 and q.fingerprint["backbone"] == int8.NAME
    assert q.fingerprint["weights"] == f.fingerprint["weights"]
    assert q.fingerprint != f.fingerprint
    imgs = [Image.open(p).convert("RGB") for p in sorted(photos_dir.rglob("*.*"))]
    a, b = q.embed(imgs), f.embed(imgs)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.8 and cos.mean() > 0.9, cos
    assert len(q.classify(imgs[:2])[0]) == 5


_BUILD = """
import sys
from cbir.backbones import efficientnet_int8 as q
print(q.int8_path(int(sys.argv[1])).read_bytes()[:16].hex())
"""


def test_file_lock_makes_a_second_process_wait_and_reuse(tmp_path):
    """While one process holds the build lock, another waits; it then finds the file the
    first one wrote and does not build its own."""
    cache = tmp_path / "cache"
    (cache / "backbones").mkdir(parents=True)
    fp32 = efficientnet_lite.onnx_path(SIZE)
    shutil.copy(fp32, cache / "backbones" / fp32.name)  # no torch export in the test
    env = {**os.environ, "CBIR_CACHE": str(cache)}
    digest = sha256_file(fp32)[:12]
    name = f"{int8.NAME}-{digest}-{SIZE}px-calib{int8.CALIBRATION}-{int8.recipe_digest()}.onnx"
    target = cache / "backbones" / name
    lock = target.parent / f".{target.name}.lock"
    with int8._file_lock(lock):
        proc = subprocess.Popen(
            [sys.executable, "-c", _BUILD, str(SIZE)], env=env, stdout=subprocess.PIPE, text=True
        )
        time.sleep(8)  # it imports, finds no file, and blocks on the lock
        assert proc.poll() is None and not target.exists()
        target.write_bytes(b"built elsewhere!")  # what the lock holder would have written
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert out.strip() == b"built elsewhere!".hex()
    assert [p.name for p in target.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_cli_index_with_int8_and_mixing_refused(capsys, photos_dir, tmp_path):
    idx = tmp_path / "int8-index"
    code, out, err = run(
        capsys,
        "index",
        str(photos_dir),
        "--index",
        str(idx),
        "--backbone",
        int8.NAME,
        "--size",
        str(SIZE),
        "--json",
    )
    assert code == 0, err
    assert json.loads(out)["indexed"] > 10
    store = IndexStore.open(idx)
    try:
        cfg = store.config
    finally:
        store.close()
    assert cfg["backbone_spec"] == int8.NAME
    assert cfg["backbone"] == registry.open_backbone(int8.NAME, size=SIZE).fingerprint
    # rank 1 of every photo is itself
    for q in sorted(p for p in photos_dir.rglob("*") if p.is_file()):
        code, out, err = run(capsys, "search", str(idx), str(q), "-k", "1", "--json")
        assert code == 0, err
        assert json.loads(out)["results"][0]["path"] == str(q)
    # an fp32 index refuses the int8 backbone, and the int8 index the fp32 one
    fp32_idx = tmp_path / "fp32-index"
    code, _, err = run(
        capsys, "index", str(photos_dir), "--index", str(fp32_idx), "--size", str(SIZE)
    )
    assert code == 0, err
    code, _, err = run(
        capsys, "index", str(photos_dir), "--index", str(fp32_idx), "--backbone", int8.NAME
    )
    assert code != 0
    assert f"not --backbone {int8.NAME}" in err and "use another --index directory" in err
    code, _, err = run(
        capsys, "index", str(photos_dir), "--index", str(idx), "--backbone", registry.DEFAULT
    )
    assert code != 0
    assert f"was built with the {int8.NAME} backbone" in err and "not --backbone" in err

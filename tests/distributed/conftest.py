"""Shared data for the scale-out tests: unique JPEG crops of real photos, indexed once."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbir.index import vector_index
from cbir.index.store import IndexStore
from cbir.pipeline import index_folder
from tests.conftest import photo_arrays


def write_crops(
    root: Path, per_photo: int, seed: int = 0, size: tuple[int, int] = (96, 320)
) -> list[Path]:
    """``per_photo`` distinct random crops + resizes of each scikit-image photo, as JPEGs."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for name, a in photo_arrays().items():
        img = Image.fromarray(a).convert("RGB")
        w, h = img.size
        for j in range(per_photo):
            cw, ch = int(w * rng.uniform(0.5, 0.95)), int(h * rng.uniform(0.5, 0.95))
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            side = int(rng.integers(*size))
            crop = img.crop((x, y, x + cw, y + ch)).resize(
                (side, max(8, side * ch // cw)), Image.BILINEAR
            )
            p = root / ("sub" if j % 2 else "") / f"{name}_{j}.jpg"
            p.parent.mkdir(exist_ok=True)
            crop.save(p, quality=int(rng.integers(70, 95)))
            out.append(p)
    return out


@pytest.fixture(scope="session")
def crops_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """52 unique crops of real photos, two exact copies (tied results) and a corrupt file."""
    root = tmp_path_factory.mktemp("crops")
    files = write_crops(root, per_photo=4)
    shutil.copy(files[0], root / "copy_a.jpg")
    shutil.copy(files[5], root / "sub" / "copy_b.jpg")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


@pytest.fixture(scope="session")
def crops_index(tmp_path_factory: pytest.TempPathFactory, crops_dir: Path) -> Path:
    """The single-process (reference) index of :func:`crops_dir`."""
    idx = tmp_path_factory.mktemp("crops_idx") / "index"
    index_folder(crops_dir, idx, progress=False)
    return idx


def faiss_reference(index_dir: Path) -> tuple[object, np.ndarray, np.ndarray]:
    """(faiss index of the embedded path, ids, transformed vectors) of an index."""
    store = IndexStore.open(index_dir)
    try:
        index, transform, _ = vector_index.load(store)
        ids, feats = zip(*store.iter_features(), strict=True)
        return index, np.concatenate(ids), transform(np.concatenate(feats))
    finally:
        store.close()

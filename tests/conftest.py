"""Shared fixtures: small real images (scikit-image's bundled photos, Fashion-MNIST)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbir_testing.reliability.corpus import PHOTOS

FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")

#: The Fashion-MNIST subsets the training and re-ranking tests share (64 px), so that their
#: features are embedded once per session.
FASHION_SMALL: dict = dict(
    dataset="fashion-mnist",
    size=64,
    train_limit=3000,
    query_limit=500,
    database_limit=3000,
    epochs=8,
    eval_every=4,
    batch_size=128,
)


def photo_arrays() -> dict[str, np.ndarray]:
    from skimage import data

    out = {}
    for name in PHOTOS:
        a = getattr(data, name)()
        if a.dtype != np.uint8:
            a = (a * 255).astype(np.uint8) if a.max() <= 1 else a.astype(np.uint8)
        if a.ndim == 3 and a.shape[2] == 4:
            a = a[:, :, :3]
        out[name] = a
    return out


@pytest.fixture(scope="session")
def photos_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of 14 real photos as JPEG and PNG, some in a sub-folder."""
    root = tmp_path_factory.mktemp("photos")
    (root / "sub").mkdir()
    for i, (name, a) in enumerate(photo_arrays().items()):
        img = Image.fromarray(a).convert("RGB")
        folder = root / "sub" if i % 2 else root
        img.save(folder / (f"{name}.jpg" if i % 3 else f"{name}.png"), quality=92)
    return root


@pytest.fixture
def photos_copy(photos_dir: Path, tmp_path: Path) -> Path:
    """A private, writable copy of :func:`photos_dir`."""
    import shutil

    dst = tmp_path / "photos"
    shutil.copytree(photos_dir, dst)
    return dst


@pytest.fixture
def small_index(tmp_path: Path, photos_copy: Path) -> tuple[Path, Path]:
    """(photos folder, index) of a private copy of the 13 real photos, at size 64."""
    from cbir.pipeline import index_folder

    idx = tmp_path / "index"
    index_folder(photos_copy, idx, size=64, workers=1, progress=False)
    return photos_copy, idx


def write_fashion_folder(root: Path, classes: dict[int, str], per_split: dict[str, int]) -> Path:
    """An ImageFolder of real Fashion-MNIST PNGs: ``root/SPLIT/CLASS/*.png``."""
    from cbir.data.registry import open_dataset

    ds = open_dataset("fashion-mnist")
    for split, per in per_split.items():
        images = ds[split]
        for label, name in classes.items():
            (root / split / name).mkdir(parents=True)
            for i in np.flatnonzero(images.labels == label)[:per]:
                images.load(int(i)).save(root / split / name / f"{split}{i}.png")
    return root


def fashion_available() -> bool:
    return (FASHION_ROOT / "t10k-images-idx3-ubyte.gz").exists()


needs_fashion = pytest.mark.skipif(
    not fashion_available() and not os.environ.get("CI"),
    reason="Debian's dataset-fashion-mnist is not installed (make test installs it)",
)


#: The short sketch-model run the sketch tests share (cbir.train.methods.sketch): drawings of
#: 500 training images, queries drawn from 200 test images, FASHION_SMALL's database (64 px).
SKETCH_SMALL: dict = dict(
    dataset="fashion-mnist",
    method="sketch",
    size=64,
    train_limit=500,
    query_limit=200,
    database_limit=3000,
    sketches=1,
    epochs=4,
    eval_every=2,
    batch_size=100,
    hidden=[],
    lr=2e-3,
)


@pytest.fixture(scope="session")
def sketch_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """(run directory, final.json) of a short `cbir train --method sketch` run."""
    if not fashion_available():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (make test installs it)")
    from cbir.train.registry import make_config
    from cbir.train.trainer import train

    run = tmp_path_factory.mktemp("sketch") / "run"
    return run, train(make_config(SKETCH_SMALL), run, progress=False)

"""Ray Data embedding, locally on 2 CPUs: the same index as the single-process path."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray")

from cbir.cli import main  # noqa: E402
from cbir.distributed.ray_embed import RayEngine  # noqa: E402
from cbir.index.store import IndexStore  # noqa: E402
from cbir.pipeline import index_folder  # noqa: E402

#: Columns that must match between the two indexes (all but the time added and layout).
COLUMNS = ("id", "path", "sha256", "size", "mtime_ns", "width", "height", "tags", "extra")


@pytest.fixture(scope="module")
def cluster():
    """One local Ray for the whole module (starting Ray takes seconds)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def snapshot(index_dir: Path) -> tuple[list[tuple], np.ndarray]:
    """(rows, features in id order) of an index."""
    store = IndexStore.open(index_dir)
    try:
        rows = store.rows()
        ids = [r["id"] for r in rows]
        return [tuple(r[c] for c in COLUMNS) for r in rows], store.features(ids)
    finally:
        store.close()


def assert_same_index(a: Path, b: Path) -> None:
    rows_a, feats_a = snapshot(a)
    rows_b, feats_b = snapshot(b)
    assert rows_a == rows_b
    np.testing.assert_allclose(feats_a, feats_b, atol=1e-5, rtol=0)


def summary_counts(s) -> dict:
    d = s.to_dict()
    return {
        k: d[k] for k in ("found", "indexed", "reused", "unchanged", "touched", "removed", "total")
    } | {"failed": sorted((f["path"], f["reason"]) for f in d["failed"])}


def test_ray_index_equals_single_process_then_incremental(cluster, crops_dir, tmp_path):
    folder = tmp_path / "imgs"
    shutil.copytree(crops_dir, folder)
    local, remote = tmp_path / "local", tmp_path / "ray"
    s_local = index_folder(folder, local, progress=False, batch_size=8)
    engine = RayEngine(workers=2)
    s_ray = index_folder(folder, remote, progress=False, batch_size=8, engine=engine)
    assert summary_counts(s_ray) == summary_counts(s_local)
    assert s_ray.failed and s_ray.indexed == len(list(folder.rglob("*.jpg"))) - 1
    assert_same_index(local, remote)

    # incremental: a new file, a copy of indexed content, a touched file, a removed file
    jpgs = sorted(folder.rglob("*_1.jpg"))
    shutil.copy(jpgs[0], folder / "new_copy.jpg")
    Image.open(jpgs[1]).transpose(Image.FLIP_LEFT_RIGHT).save(folder / "new.jpg", quality=90)
    st = jpgs[2].stat()
    os.utime(jpgs[2], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    jpgs[3].unlink()
    s_local = index_folder(folder, local, progress=False, batch_size=8)
    s_ray = index_folder(folder, remote, progress=False, batch_size=8, engine=engine)
    assert summary_counts(s_ray) == summary_counts(s_local)
    assert (s_ray.reused, s_ray.touched, s_ray.removed) == (1, 1, 1)
    assert_same_index(local, remote)
    assert not engine._started  # the module's Ray was reused, not restarted


def test_cli_engine_ray(cluster, photos_dir, tmp_path, capsys):
    code = main(
        ["index", str(photos_dir), "--index", str(tmp_path / "r"), "--engine", "ray", "--json"]
    )
    d = json.loads(capsys.readouterr().out)
    assert code == 0 and d["indexed"] == d["total"] == d["found"] and d["n_failed"] == 0
    assert main(["index", str(photos_dir), "--index", str(tmp_path / "l"), "--json"]) == 0
    capsys.readouterr()
    assert_same_index(tmp_path / "l", tmp_path / "r")
    assert ray.is_initialized()  # joined, so left running for the module


def test_ray_address_needs_engine_ray(photos_dir, tmp_path, capsys):
    code = main(["index", str(photos_dir), "--index", str(tmp_path / "x"), "--ray-address", "auto"])
    assert code == 1 and "--ray-address needs --engine ray" in capsys.readouterr().err

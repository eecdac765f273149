"""Transforms by kind: the frozen backbone without torch, a learned head from its
checkpoint copy in an index directory."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from cbir.errors import CbirError
from cbir.heads.head import Head
from cbir.heads.learned import LearnedTransform, save_checkpoint
from cbir.heads.transform import FrozenTransform, load_transform, spec_digest
from cbir.train.registry import make_config
from cbir.train.runs import make_checkpoint


def test_frozen_transforms_do_not_import_torch():
    code = (
        "import sys; from cbir.heads.transform import load_transform;"
        " t = load_transform({'kind': 'frozen', 'dim': 4});"
        " assert t.kind == 'float' and 'torch' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_learned_head_loads_from_its_index_copy(tmp_path):
    torch.manual_seed(0)
    head = Head(6, 16, [8])
    rng = np.random.default_rng(0)
    mean, std = rng.normal(size=6), rng.uniform(0.5, 2, size=6)
    cfg = make_config(method="dsh", bits=16)
    save_checkpoint(tmp_path / "model.pt", make_checkpoint(cfg, head, mean, std, {}, {}))
    t = LearnedTransform.from_path(tmp_path)
    index = tmp_path / "index"
    index.mkdir()
    t.install(index)
    spec = t.spec()
    back = load_transform(spec, index)
    x = rng.normal(size=(5, 6)).astype(np.float32)
    assert isinstance(back, LearnedTransform) and back.kind == "binary" and back.dim == 16
    assert np.array_equal(back(x), t(x)) and back(x).shape == (5, 2)
    with torch.no_grad():
        want = head(torch.from_numpy((x - mean.astype(np.float32)) / std.astype(np.float32)))
    assert np.allclose(t.outputs(x), want.numpy(), atol=1e-5)
    assert spec_digest(spec) == spec_digest(dict(spec)) != spec_digest(FrozenTransform().spec())
    with pytest.raises(CbirError, match="unknown transform kind 'pq'"):
        load_transform({"kind": "pq"}, index)

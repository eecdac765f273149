"""The joint image-text model (VSE++, Faghri et al., BMVC 2018) of a run or an index.

Apart from :mod:`cbir.search.joint` so that :mod:`cbir.search.text` finds the model
without importing the searcher (which imports it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cbir.errors import CbirError
from cbir.heads.learned import LearnedTransform
from cbir.heads.transform import load_transform
from cbir.index.store import IndexStore


def has_joint_model(index_dir: str | os.PathLike[str]) -> bool:
    """True if ``index_dir`` is an index built with a joint image-text model."""
    if not IndexStore.exists(index_dir):
        return False
    store = IndexStore.open(index_dir)
    try:
        spec = store.get_meta("transform", {}) or {}
    finally:
        store.close()
    return spec.get("kind") == "learned" and bool(spec.get("text"))


def joint_model(run_or_index: str | os.PathLike[str] | Any) -> LearnedTransform:
    """The joint model of a ``cbir train`` run (directory or model.pt), an index built
    with one, or an open :class:`~cbir.search.searcher.Searcher` of such an index."""
    if not isinstance(run_or_index, str | os.PathLike):  # an open searcher
        model, where = run_or_index.transform, run_or_index.store.root
    else:
        where = Path(run_or_index)
        if IndexStore.exists(where):
            store = IndexStore.open(where)
            try:
                model = load_transform(store.get_meta("transform", {}) or {}, store.root)
            finally:
                store.close()
        else:
            model = LearnedTransform.from_path(where)
    if not isinstance(model, LearnedTransform) or not model.joint:
        what = getattr(model, "method", None) or "frozen backbone"
        raise CbirError(
            f"{where}: no image-text model here ({what}); train one with `cbir train --method vsepp"
            " --captions FILE` and index with --model RUN_DIR"
        )
    return model

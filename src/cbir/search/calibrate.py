"""Calibrate an index's "no match" threshold from labelled data (a reject class).

The score of the best result says how sure a search is. ``calibrate`` finds the lowest
top-1 score at which answers are right often enough: with the index's own model
(backbone + head, so scores are on the index's scale), a labelled dataset is split by
class into *known* classes (half of their images form a gallery, the other half query
it) and *held-out* classes, whose images should get no match. Generated reject images
join the negatives, as the CBIR notes suggest: uniform noise, and splices of two
known-class images of different classes (left half of one, right half of the other).

An answer is *right* when the query's class is known and the top-1 gallery image has
that class; every answer to a negative is wrong. The threshold is the smallest top-1
score ``t`` such that the precision of the answers with score >= ``t`` reaches the
target; it is stored in the index meta as ``{"score": t, ...}`` and the service shows
"no match" below it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from cbir.codes.registry import code_kind
from cbir.errors import CbirError


def _generated_rejects(
    images: Any, labels: np.ndarray, n: int, size: int, rng: np.random.Generator
) -> list[Image.Image]:
    out: list[Image.Image] = []
    for i in range(n):
        if i % 2 == 0:
            a = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            out.append(Image.fromarray(a))
            continue
        while True:
            a, b = rng.choice(len(labels), 2, replace=False)
            if labels[a] != labels[b]:
                break
        ia = images.load(int(a)).resize((size, size))
        ib = images.load(int(b)).resize((size, size))
        splice = np.asarray(ia).copy()
        splice[:, size // 2 :] = np.asarray(ib)[:, size // 2 :]
        out.append(Image.fromarray(splice))
    return out


def choose_threshold(scores: np.ndarray, right: np.ndarray, precision: float) -> dict[str, float]:
    """Smallest score threshold whose accepted answers reach ``precision``.

    ``scores``: top-1 score of every query; ``right``: whether its answer is right.
    Returns the threshold with the precision and recall (share of right answers kept)
    it achieves.
    """
    order = np.argsort(-scores, kind="stable")
    s, r = scores[order], right[order].astype(np.float64)
    kept_right = np.cumsum(r)
    prec = kept_right / np.arange(1, len(s) + 1)
    # a cut must not split a group of equal scores
    last_of_group = np.r_[s[1:] != s[:-1], True]
    ok = np.flatnonzero((prec >= precision) & last_of_group)
    total_right = max(r.sum(), 1.0)
    if len(ok) == 0:
        top = float(s[0]) + 1e-6 if len(s) else 1.0
        return {"score": top, "precision": 1.0, "recall": 0.0}
    j = int(ok[-1])
    return {
        "score": float(s[j]),
        "precision": float(prec[j]),
        "recall": float(kept_right[j] / total_right),
    }


def calibrate(
    index_dir: str,
    dataset: str,
    precision: float = 0.9,
    seed: int = 0,
    limit: int = 4000,
    progress: bool | None = None,
    write: bool = True,
) -> dict[str, Any]:
    """Compute (and store in the index) the no-match threshold; returns what was stored."""
    from cbir.backbones.cache import dataset_features
    from cbir.backbones.registry import backbone_for
    from cbir.data.registry import open_dataset
    from cbir.index.store import IndexStore
    from cbir.index.vector_index import current_transform

    if not 0 < precision <= 1:
        raise CbirError(f"--precision must be in (0, 1], got {precision}")
    store = IndexStore.open(index_dir)
    try:
        backbone = backbone_for(store)
        transform = current_transform(store)
        ds = open_dataset(dataset)
        split = max(ds.splits.values(), key=len) if "test" not in ds.splits else ds["test"]
        labels = np.asarray(split.labels)
        if labels.ndim != 1:
            raise CbirError(f"{dataset}: calibration needs single-label data")
        rng = np.random.default_rng(seed)
        classes = rng.permutation(np.unique(labels))
        if len(classes) < 2:
            raise CbirError(f"{dataset}: calibration needs at least two classes")
        known = set(classes[: max(1, len(classes) // 2)].tolist())
        idx = rng.permutation(len(labels))[:limit]
        kn = idx[np.isin(labels[idx], sorted(known))]
        un = idx[~np.isin(labels[idx], sorted(known))]
        gallery, queries = np.sort(kn[::2]), np.sort(kn[1::2])
        negatives = np.sort(un)
        size = backbone.preprocess.size
        feats = lambda ix, tag: np.asarray(  # noqa: E731
            dataset_features(
                split.subset(ix, f"{split.name}-cal{tag}-s{seed}-{len(ix)}"),
                size=size,
                mode=backbone.preprocess.mode,
                progress=progress,
                weights=backbone.weights_file,
            )
        )
        g, q, n = feats(gallery, "g"), feats(queries, "q"), feats(negatives, "n")
        gen = _generated_rejects(split, labels, max(10, len(negatives) // 4), size, rng)
        gen_feats, _ = backbone.run(np.stack([backbone.preprocess(im) for im in gen]))
        vg = transform(g)
        probes = np.concatenate([q, n, gen_feats])
        vp = transform(probes)
        score = code_kind(transform).scores(vp, vg, transform.dim)
        best = score.argmax(1)
        top = score[np.arange(len(score)), best]
        right = np.zeros(len(probes), bool)
        right[: len(q)] = labels[gallery][best[: len(q)]] == labels[queries]
        chosen = choose_threshold(top, right, precision)
        result = {
            **chosen,
            "target_precision": precision,
            "dataset": ds.name,
            "known_classes": len(known),
            "held_out_classes": len(classes) - len(known),
            "gallery": len(gallery),
            "positives": len(queries),
            "negatives": len(negatives),
            "generated_rejects": len(gen),
            "top1_accuracy_known": float(right[: len(q)].mean()) if len(q) else 0.0,
            "negatives_rejected": float((top[len(q) :] < chosen["score"]).mean())
            if len(top) > len(q)
            else 0.0,
        }
        if write:
            store.lock()
            try:
                store.set_meta("threshold", result)
            finally:
                store.unlock()
        return result
    finally:
        store.close()

"""Relevance feedback stored in an index, turned into training pairs for a learned head.

The service records judgements in the index's SQLite (``POST /feedback``: query, result
id, relevant or not; :meth:`cbir.index.store.IndexStore.add_feedback`). The query is
``id:N`` (an indexed image) or ``sha256:<hex>`` (an upload, kept by the service under
``INDEX_DIR/queries/`` when feedback names it). This module reads them back as backbone
features and pairs, the "collect the bad cases, retrain" loop of relevance feedback in
CBIR (Rui, Huang, Ortega, Mehrotra, "Relevance Feedback: A Power Tool for Interactive
Content-Based Image Retrieval", IEEE TCSVT 1998), here used to retrain the head:

- the latest judgement of each (query, result) counts; an upload whose content is indexed
  is the same item as that image;
- relevant judgements join items into groups (similarity is an equivalence: the union of
  the positive edges); every pair inside a group is a positive pair;
- a "not relevant" judgement makes every pair across the two groups a negative pair (a
  hard negative: it was ranked near the top); one inside a group contradicts the others
  and is dropped.

:class:`FeedbackTerm` adds a loss on these pairs to every training batch: the run's own
metric loss with the pairs or triplets as PML's ``indices_tuple`` (contrastive,
multi-similarity: pairs; triplet, margin: triplets ``(a, p, n)``, with ``p = a`` when
``a`` has no positive), or a pairwise hashing loss (DSH, DPSH, HashNet, DCH) on exactly
those pairs (:meth:`cbir.losses.hashing.base.HashingLoss.pair_loss`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cbir.errors import CbirError

#: Metric losses that train on explicit pairs / triplets, and pairwise hashing losses.
METRIC_PAIR_LOSSES = ("contrastive", "multi-similarity")
METRIC_TRIPLET_LOSSES = ("triplet", "margin")
HASHING_PAIR_LOSSES = ("dsh", "dpsh", "hashnet", "dch")
FEEDBACK_METHODS = METRIC_PAIR_LOSSES + METRIC_TRIPLET_LOSSES + HASHING_PAIR_LOSSES


@dataclass
class FeedbackPairs:
    """The images feedback names and the pairs it implies.

    Attributes:
        features: ``(m, d)`` backbone features of the items.
        keys: each item's key (``id:N``, or ``sha256:<hex>`` for an upload not indexed).
        group: ``(m,)`` group of each item (items joined by relevant judgements).
        positive: ``(p, 2)`` item pairs ``i < j`` of the same group.
        negative: ``(q, 2)`` item pairs of two groups a judgement calls not relevant.
        judgements: feedback rows used; ``skipped``: why the others were not.
    """

    features: np.ndarray
    keys: list[str]
    group: np.ndarray
    positive: np.ndarray
    negative: np.ndarray
    judgements: int = 0
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "judgements": self.judgements,
            "images": len(self.keys),
            "positive_pairs": int(len(self.positive)),
            "negative_pairs": int(len(self.negative)),
            "skipped": len(self.skipped),
            "why_skipped": self.skipped[:5],
        }


def _root(index_dir: str | os.PathLike[str]) -> Path:
    from cbir.index.store import IndexStore

    root = Path(index_dir)
    if not IndexStore.exists(root):
        raise CbirError(
            f"{root}: no cbir index here (--feedback takes the INDEX_DIR `cbir serve` recorded feedback in)"
        )
    return root


def load_feedback(
    index_dir: str | os.PathLike[str], fingerprint: dict[str, Any] | None = None
) -> FeedbackPairs:
    """The feedback stored in ``index_dir`` as features and pairs (see the module doc).

    ``fingerprint``: the backbone the training features come from; the index must have
    been built with the same one (same weights and input size).
    """
    from cbir.backbones.registry import backbone_for
    from cbir.index.store import IndexStore

    root = _root(index_dir)
    store = IndexStore.open(root)
    try:
        have = store.config["backbone"]
        if fingerprint is not None and have != fingerprint:
            raise CbirError(
                f"{root}: built with {have.get('backbone')} at {have['preprocess']['size']} px, the"
                f" training features are {fingerprint.get('backbone')} at"
                f" {fingerprint['preprocess']['size']} px; train with --size {have['preprocess']['size']}"
            )
        rows = store.feedback()
        if not rows:
            raise CbirError(
                f"{root}: no feedback stored; mark results right or wrong in `cbir serve` (or POST /feedback) first"
            )
        latest: dict[tuple[str, int], bool] = {}
        for r in rows:  # in id order: the latest judgement of a pair wins
            latest[(r["query"], int(r["result_id"]))] = bool(r["relevant"])
        skipped: list[str] = []
        uploads: dict[str, np.ndarray] = {}
        backbone = None

        def key_of(query: str) -> str | None:
            nonlocal backbone
            if query.startswith("id:"):
                return query if store.row(int(query[3:])) is not None else None
            sha = query.split(":", 1)[1]
            ids = store.ids_by_sha(sha)
            if ids:
                return f"id:{min(ids)}"
            if query not in uploads:
                files = sorted((root / "queries").glob(f"{sha}.*"))
                if not files:
                    return None
                from cbir.data.images import decode, read_bytes

                backbone = backbone or backbone_for(store)
                img = decode(
                    read_bytes(files[0]), str(files[0]), draft_size=backbone.preprocess.size
                )
                feats, _ = backbone.run(backbone.preprocess(img)[None])
                uploads[query] = np.asarray(feats[0], np.float32)
            return query

        index: dict[str, int] = {}
        edges: list[tuple[int, int, bool]] = []
        for (query, result), relevant in latest.items():
            q = key_of(query)
            if q is None:
                skipped.append(
                    f"query {query}: no longer indexed, or the uploaded image was not kept"
                )
                continue
            r = f"id:{result}"
            if store.row(result) is None:
                skipped.append(f"result id {result}: no longer indexed")
                continue
            if q == r:
                skipped.append(f"{query} judged against itself")
                continue
            a = index.setdefault(q, len(index))
            b = index.setdefault(r, len(index))
            edges.append((a, b, relevant))
        keys = list(index)
        ids = [int(k[3:]) for k in keys if k.startswith("id:")]
        by_id = dict(zip(ids, store.features(ids), strict=True)) if ids else {}
    finally:
        store.close()
    dim = (
        int(next(iter(by_id.values())).shape[0])
        if by_id
        else (len(next(iter(uploads.values()))) if uploads else 0)
    )
    feats = np.zeros((len(keys), dim), np.float32)
    for i, k in enumerate(keys):
        feats[i] = by_id[int(k[3:])] if k.startswith("id:") else uploads[k]
    group, positive, negative, dropped = pairs_of(len(keys), edges)
    skipped += [
        f"items {keys[a]} and {keys[b]}: 'not relevant' contradicts other judgements"
        for a, b in dropped
    ]
    return FeedbackPairs(feats, keys, group, positive, negative, len(edges) - len(dropped), skipped)


def pairs_of(
    n: int, edges: list[tuple[int, int, bool]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Groups of ``n`` items under the relevant ``edges``, the positive pairs inside groups,
    the negative pairs across groups judged not relevant, and the contradicting edges."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b, rel in edges:
        if rel:
            parent[find(a)] = find(b)
    roots = [find(i) for i in range(n)]
    _, group = (
        np.unique(np.asarray(roots, np.int64), return_inverse=True)
        if n
        else (None, np.zeros(0, np.int64))
    )
    members: dict[int, list[int]] = {}
    for i, g in enumerate(group):
        members.setdefault(int(g), []).append(i)
    pos = sorted({(i, j) for m in members.values() for x, i in enumerate(m) for j in m[x + 1 :]})
    neg: set[tuple[int, int]] = set()
    dropped: list[tuple[int, int]] = []
    for a, b, rel in edges:
        if rel:
            continue
        ga, gb = int(group[a]), int(group[b])
        if ga == gb:
            dropped.append((a, b))
            continue
        neg |= {(i, j) for i in members[ga] for j in members[gb]}
    as_array = lambda p: np.asarray(sorted(p), np.int64).reshape(-1, 2)  # noqa: E731
    return np.asarray(group, np.int64), as_array(pos), as_array(neg), dropped


class FeedbackTerm:
    """A loss on the feedback pairs, added to every training batch (see the module doc).

    Args:
        method: the run's method (a name in ``FEEDBACK_METHODS``).
        loss_fn: the run's loss (a PML loss, or a :class:`HashingLoss`).
        pairs: the feedback (:func:`load_feedback`).
        x: ``(m, d)`` the feedback items' features, standardised as the training set's.
        max_pairs: pairs (or triplets) drawn per batch when there are more.
        seed: seeds that draw.
    """

    def __init__(
        self, method: str, loss_fn: Any, pairs: FeedbackPairs, x: Tensor, max_pairs: int = 512, seed: int = 0
    ) -> None:  # fmt: skip
        if method not in FEEDBACK_METHODS:
            raise CbirError(
                f"--feedback trains pair and triplet losses ({', '.join(FEEDBACK_METHODS)});"
                f" {method} learns from class labels or proxies only"
            )
        beta = getattr(loss_fn, "beta", None)
        if method == "margin" and isinstance(beta, Tensor) and beta.numel() > 1:
            raise CbirError(
                "--feedback with the margin loss needs one shared beta (feedback images have no"
                " class): add --loss-option num_classes=null"
            )
        self.method = method
        self.loss_fn = loss_fn
        self.x = x
        self.labels = torch.from_numpy(pairs.group)
        self.max_pairs = int(max_pairs)
        self.rng = np.random.default_rng([seed, 11])
        self.tuples = self._tuples(pairs)
        if len(self.tuples) == 0:
            need = (
                "a right and a wrong result" if method in METRIC_TRIPLET_LOSSES else "a judgement"
            )
            raise CbirError(
                f"the feedback gives no training pairs for {method} (it needs {need} of some query)"
            )

    def _tuples(self, p: FeedbackPairs) -> np.ndarray:
        if self.method in METRIC_TRIPLET_LOSSES:
            members: dict[int, list[int]] = {}
            for i, g in enumerate(p.group):
                members.setdefault(int(g), []).append(i)
            out = []
            for a0, b0 in p.negative:
                for a, n in ((int(a0), int(b0)), (int(b0), int(a0))):
                    positives = [m for m in members[int(p.group[a])] if m != a] or [a]
                    out += [(a, q, n) for q in positives]
            return np.asarray(sorted(set(out)), np.int64).reshape(-1, 3)
        # pairs, tagged 1 (positive) or 0 (negative)
        pos = np.c_[p.positive, np.ones(len(p.positive), np.int64)]
        neg = np.c_[p.negative, np.zeros(len(p.negative), np.int64)]
        return np.concatenate([pos, neg]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.tuples)

    def __call__(self, head: torch.nn.Module) -> Tensor:
        t = self.tuples
        if len(t) > self.max_pairs:
            t = t[np.sort(self.rng.choice(len(t), self.max_pairs, replace=False))]
        cols = 3 if self.method in METRIC_TRIPLET_LOSSES else 2
        items, inv = np.unique(t[:, :cols], return_inverse=True)
        local = torch.from_numpy(inv.reshape(-1, cols).astype(np.int64))
        u = head(self.x[torch.from_numpy(items)])
        labels = self.labels[torch.from_numpy(items)]
        if self.method in METRIC_TRIPLET_LOSSES:
            return self.loss_fn(u, labels, (local[:, 0], local[:, 1], local[:, 2]))
        is_pos = torch.from_numpy(t[:, 2] == 1)
        a, b = local[:, 0], local[:, 1]
        if self.method in METRIC_PAIR_LOSSES:  # both directions: each side is an anchor
            pa, pb = a[is_pos], b[is_pos]
            na, nb = a[~is_pos], b[~is_pos]
            return self.loss_fn(
                u,
                labels,
                (
                    torch.cat([pa, pb]),
                    torch.cat([pb, pa]),
                    torch.cat([na, nb]),
                    torch.cat([nb, na]),
                ),
            )
        m = len(items)
        s = torch.zeros(m, m, dtype=u.dtype)
        valid = torch.zeros(m, m, dtype=torch.bool)
        s[a, b] = s[b, a] = is_pos.to(u.dtype)
        valid[a, b] = valid[b, a] = True
        return self.loss_fn.pair_loss(u, s, valid)

"""The data and figures of a joint image-text space (VSE++, Faghri et al., BMVC 2018).

``cbir train --method vsepp --captions FILE --dataset DATA --out RUN_DIR`` (or ``vse0``,
the plain sum of hinges) trains with :class:`cbir.train.methods.joint.JointMethod` in the
one loop: the same configuration, optimiser, schedule, run directory (config.json,
metrics.jsonl, model.pt, loss.png, final.json) and checkpoint format as every other
head, with a second (text) head in the checkpoint.

Pairs come from a caption file (:mod:`cbir.data.captions`):

- captions of image files (COCO, Flickr30k, Karpathy, simple CSV/JSON with ``path``):
  ``--dataset`` is the folder the file names are relative to. The held-out pairs are the
  file's ``test`` split (else ``val``), or else a seeded 10% of the images (at most 1,000,
  the VSE++ 1K-image test) with all their captions. A group is one image.
- captions of classes (``class`` column, e.g. :func:`cbir.data.captions.fashion_mnist_captions`):
  ``--dataset`` is a registered dataset; training images come from the protocol's
  training split and held-out images from its query split, training captions from the
  file's ``train`` split and held-out captions from its ``test`` split (or a seeded 20%
  of each class's captions). A group is one class.

One epoch visits every training image once, paired with a random caption of its group;
pairs of one group are not negatives of each other in the loss. Held-out figures
(``final.json``): Recall@1/5/10 image-to-text (an image query hits when a caption of its
group is in the top K) and text-to-image (a caption query hits when an image of its group
is in the top K), both tie-aware (:func:`cbir.eval.metrics.evaluate_retrieval`), mAP both
ways, and ``rsum``, the sum of the six recalls.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cbir.backbones.cache import dataset_features
from cbir.backbones.registry import open_backbone
from cbir.data.base import ImageSet, file_loader
from cbir.data.captions import TEST_SPLITS, TRAIN_SPLITS, CaptionSet, read_captions
from cbir.data.folder import find_images
from cbir.errors import CbirError
from cbir.eval.metrics import evaluate_retrieval
from cbir.eval.protocols import resolve
from cbir.heads.vsepp import ZeroShotJoint, cached_text_embeddings, text_fingerprint
from cbir.train.config import TrainConfig

RECALL_AT = (1, 5, 10)
HOLD_OUT_IMAGES = 1000


@dataclass
class JointData:
    """Backbone features, sentence embeddings and groups of the training and held-out pairs."""

    images: np.ndarray
    image_groups: np.ndarray
    texts: np.ndarray
    text_groups: np.ndarray
    test_images: np.ndarray
    test_image_groups: np.ndarray
    test_texts: np.ndarray
    test_text_groups: np.ndarray
    test_captions: list[str]
    level: str  # "image" or "class"
    name: str
    fingerprint: dict[str, Any]
    text_fingerprint: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------ data
def _limit(images, n: int | None, seed: int, tag: str):
    if not n or n >= len(images):
        return images
    idx = np.sort(np.random.default_rng([seed, len(tag)]).choice(len(images), n, replace=False))
    return images.subset(idx, f"{images.name}-{tag}{n}-s{seed}")


def load_joint_data(cfg: TrainConfig, progress: bool | None = None) -> JointData:
    """Features (cached) and caption embeddings (cached) of the training and held-out pairs."""
    captions = getattr(cfg.options, "captions", None)
    if not captions:
        raise CbirError(
            f"--method {cfg.method} trains on (image, caption) pairs: give --captions FILE"
        )
    caps = read_captions(captions)
    if caps.by_class:
        return _class_pairs(cfg, caps, progress)
    return _image_pairs(cfg, caps, progress)


def _class_pairs(cfg: TrainConfig, caps: CaptionSet, progress: bool | None) -> JointData:
    proto, ds, splits = resolve(cfg.dataset, cfg.protocol, seed=cfg.seed)
    if splits.train is None or len(splits.train) == 0:
        raise CbirError(f"protocol {proto.name} has no training split")
    names = list(ds.class_names or splits.train.class_names or [])
    lookup = {n.lower(): i for i, n in enumerate(names)}
    labels = []
    for c in caps.captions:
        key = str(c.label).strip().lower()
        if key in lookup:
            labels.append(lookup[key])
        elif key.isdigit() and int(key) < len(names):
            labels.append(int(key))
        else:
            raise CbirError(
                f"{caps.path}: class {c.label!r} is not a class of {ds.name} ({', '.join(names)});"
                " name the classes as the dataset does, or by number"
            )
    lab = np.asarray(labels, np.int64)
    is_train, is_test = _caption_split(caps, lab, cfg.seed)
    size = cfg.size or proto.size
    train = _limit(splits.train, cfg.train_limit, cfg.seed, "t")
    test = _limit(splits.query, cfg.query_limit, cfg.seed, "q")
    feats = lambda s: np.asarray(dataset_features(s, size=size, progress=progress), np.float32)  # noqa: E731
    texts = [c.caption for c in caps.captions]
    emb = cached_text_embeddings(texts, progress=progress)
    train_labels, test_labels = np.asarray(train.labels), np.asarray(test.labels)
    if train_labels.ndim != 1:
        raise CbirError(f"{ds.name}: class captions need single-label images")
    missing = sorted(set(train_labels.tolist()) - set(lab[is_train].tolist()))
    if missing:
        raise CbirError(
            f"{caps.path}: no training caption for class(es) {', '.join(names[m] for m in missing)};"
            " every class with training images needs one"
        )
    return JointData(
        images=feats(train),
        image_groups=train_labels,
        texts=emb[is_train],
        text_groups=lab[is_train],
        test_images=feats(test),
        test_image_groups=test_labels,
        test_texts=emb[is_test],
        test_text_groups=lab[is_test],
        test_captions=[t for t, m in zip(texts, is_test, strict=True) if m],
        level="class",
        name=f"{proto.name}+{Path(caps.path).name}",
        fingerprint=open_backbone(size=size).fingerprint,
        text_fingerprint=text_fingerprint(),
        info={"layout": caps.layout, "classes": names},
    )


def _caption_split(
    caps: CaptionSet, labels: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(training, held-out) masks of class captions: the file's split, else 20% per class."""
    splits = np.asarray([c.split or "" for c in caps.captions], dtype=object)
    if caps.has_splits:
        is_train = np.isin(splits, TRAIN_SPLITS)
        is_test = (
            np.isin(splits, TEST_SPLITS) if np.isin(splits, TEST_SPLITS).any() else splits == "val"
        )
    else:
        rng = np.random.default_rng(seed)
        is_test = np.zeros(len(labels), bool)
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)
            if len(idx) > 1:
                is_test[rng.choice(idx, max(1, len(idx) // 5), replace=False)] = True
        is_train = ~is_test
    if not is_test.any():
        raise CbirError(f"{caps.path}: no held-out captions (mark some with split=test)")
    return is_train, is_test


def _resolve_images(root: Path, names: list[str], caps_path: str) -> dict[str, str]:
    """File name in the caption file -> path under ``root`` (direct, else by base name)."""
    out: dict[str, str] = {}
    by_base: dict[str, list[str]] | None = None
    missing = []
    for name in names:
        p = root / name
        if p.is_file():
            out[name] = str(p)
            continue
        if by_base is None:
            by_base = {}
            for f in find_images(root):
                by_base.setdefault(f.name, []).append(str(f))
        hits = by_base.get(Path(name).name, [])
        if len(hits) == 1:
            out[name] = hits[0]
        else:
            missing.append(name)
    if missing:
        raise CbirError(
            f"{caps_path}: {len(missing)} of {len(names)} images not found under {root}"
            f" (e.g. {missing[0]!r}); pass the image folder as --dataset"
        )
    return out


def _image_pairs(cfg: TrainConfig, caps: CaptionSet, progress: bool | None) -> JointData:
    root = Path(os.path.expanduser(cfg.dataset))
    if not root.is_dir():
        raise CbirError(
            f"{cfg.dataset}: captions of image files need --dataset IMAGE_FOLDER (the folder their names are relative to)"
        )
    names = list(dict.fromkeys(c.image for c in caps.captions if c.image is not None))
    paths = _resolve_images(root, names, caps.path)
    img_of = {n: i for i, n in enumerate(names)}
    cap_img = np.asarray([img_of[c.image] for c in caps.captions], np.int64)  # type: ignore[index]
    # held-out images: the file's test (else val) split, else a seeded share
    split_of: dict[int, str] = {}
    for c, i in zip(caps.captions, cap_img, strict=True):
        if c.split:
            split_of[int(i)] = c.split
    n = len(names)
    if split_of:
        test_name = "test" if "test" in split_of.values() else "val"
        is_test_img = np.asarray([split_of.get(i) == test_name for i in range(n)])
        is_train_img = np.asarray([split_of.get(i) in TRAIN_SPLITS for i in range(n)])
    else:
        k = min(HOLD_OUT_IMAGES, max(1, n // 10))
        is_test_img = np.zeros(n, bool)
        is_test_img[np.random.default_rng(cfg.seed).choice(n, k, replace=False)] = True
        is_train_img = ~is_test_img
    if not is_test_img.any() or not is_train_img.any():
        raise CbirError(f"{caps.path}: need both training and held-out images ({n} images in all)")
    rng = np.random.default_rng([cfg.seed, 7])
    train_ids, test_ids = np.flatnonzero(is_train_img), np.flatnonzero(is_test_img)
    if cfg.train_limit and cfg.train_limit < len(train_ids):
        train_ids = np.sort(rng.choice(train_ids, cfg.train_limit, replace=False))
    if cfg.query_limit and cfg.query_limit < len(test_ids):
        test_ids = np.sort(rng.choice(test_ids, cfg.query_limit, replace=False))
    all_paths = [paths[names[i]] for i in range(n)]
    images = ImageSet(
        name=f"captions-{root.name}",
        labels=np.arange(n),
        loader=file_loader(all_paths),
        keys=all_paths,
        paths=all_paths,
    )
    size = cfg.size or 224
    x_tr = np.asarray(
        dataset_features(
            images.subset(train_ids, f"{images.name}-train"), size=size, progress=progress
        ),
        np.float32,
    )
    x_te = np.asarray(
        dataset_features(
            images.subset(test_ids, f"{images.name}-test"), size=size, progress=progress
        ),
        np.float32,
    )
    texts = [c.caption for c in caps.captions]
    emb = cached_text_embeddings(texts, progress=progress)
    pos_tr = {int(i): j for j, i in enumerate(train_ids)}
    pos_te = {int(i): j for j, i in enumerate(test_ids)}
    tr_caps = np.flatnonzero(np.isin(cap_img, train_ids))
    te_caps = np.flatnonzero(np.isin(cap_img, test_ids))
    return JointData(
        images=x_tr,
        image_groups=np.arange(len(train_ids)),
        texts=emb[tr_caps],
        text_groups=np.asarray([pos_tr[int(cap_img[j])] for j in tr_caps], np.int64),
        test_images=x_te,
        test_image_groups=np.arange(len(test_ids)),
        test_texts=emb[te_caps],
        test_text_groups=np.asarray([pos_te[int(cap_img[j])] for j in te_caps], np.int64),
        test_captions=[texts[j] for j in te_caps],
        level="image",
        name=f"{root.name}+{Path(caps.path).name}",
        fingerprint=open_backbone(size=size).fingerprint,
        text_fingerprint=text_fingerprint(),
        info={"layout": caps.layout, "n_images": n},
    )


# ------------------------------------------------------------------ evaluation
def joint_metrics(
    image_vecs: np.ndarray,
    image_groups: np.ndarray,
    text_vecs: np.ndarray,
    text_groups: np.ndarray,
    recall_at: tuple[int, ...] = RECALL_AT,
    metric: str = "cosine",
) -> dict[str, float]:
    """Recall@K and mAP image-to-text and text-to-image of unit vectors (module doc), or
    of packed binary codes (``metric="hamming"``, ties counted as expected values)."""
    kw = dict(
        metric=metric,
        recall_at=recall_at,
        precision_at=(1,),
        hamming_radius=None,
        map_at_r=False,
        pr_points=2,
        pk_curve=[1],
        progress=False,
    )
    out: dict[str, float] = {}
    for name, q, ql, db, dbl in (
        ("i2t", image_vecs, image_groups, text_vecs, text_groups),
        ("t2i", text_vecs, text_groups, image_vecs, image_groups),
    ):
        dtype = np.uint8 if metric == "hamming" else np.float32
        m = evaluate_retrieval(
            np.ascontiguousarray(q, dtype), np.ascontiguousarray(db, dtype), ql, dbl, **kw
        )
        for k in recall_at:
            out[f"{name}_recall@{k}"] = float(m[f"recall@{k}"])
        out[f"{name}_map"] = float(m["map"])
    out["rsum"] = float(sum(v for k, v in out.items() if "_recall@" in k))
    return out


def evaluate_joint(transform: Any, data: JointData, limit: int | None = None) -> dict[str, float]:
    """Held-out figures of a trained joint model (``limit``: first images only, for speed)."""
    x, g = data.test_images, data.test_image_groups
    keep_t = np.ones(len(data.test_texts), bool)
    if limit and limit < len(x):
        idx = np.sort(np.random.default_rng(0).choice(len(x), limit, replace=False))
        x, g = x[idx], g[idx]
        if data.level == "image":  # keep the captions of the images kept
            keep_t = np.isin(data.test_text_groups, g)
    return joint_metrics(
        transform(x),
        g,
        transform.text_queries(data.test_texts[keep_t]),
        data.test_text_groups[keep_t],
        metric="hamming" if transform.kind == "binary" else "cosine",
    )


def evaluate_zero_shot(data: JointData, top_k: int = 5) -> dict[str, float]:
    """Held-out figures of the untrained baseline (:class:`cbir.heads.vsepp.ZeroShotJoint`)."""
    zs = ZeroShotJoint(top_k)
    return joint_metrics(
        zs.images(data.test_images),
        data.test_image_groups,
        zs.texts(data.test_texts),
        data.test_text_groups,
    )

"""Named evaluation protocols: the splits and metrics the papers report.

A protocol turns a :class:`~cbir.data.base.Dataset` into a training set, a query set and
a database (or all-vs-all within the queries, as the zero-shot metric-learning papers
evaluate), with the mAP cut-off and the metric family it reports. Random splits are drawn
with a fixed seed, so a protocol is reproducible.

Hashing protocols (Image-Retrieve / DeepHash-pytorch conventions):

- ``cifar10``: 1,000 queries (100 per class) and 5,000 training images (500 per class)
  drawn from all 60,000; the other 54,000 are the database; mAP@all (DeepHash-pytorch's
  "cifar10" setting).
- ``cifar10-all``: the 10,000 test images query the 50,000 training images (train = db).
- ``nuswide-21``: 2,100 queries, 10,500 training images, the rest as database; mAP@5000;
  multi-label relevance.
- ``cub-hashing``: the CUB-200-2011 train split is the database (and training set), the
  test split the queries (Image-Retrieve).
- ``fashion-mnist``: 60,000 training images = database, 10,000 test images = queries,
  mAP@all (offline: Debian's dataset-fashion-mnist).

Zero-shot metric-learning protocols (Oh Song et al., CVPR 2016; Musgrave et al., ECCV
2020): train on the first half of the classes, evaluate all-vs-all on the unseen half
with Recall@K, NMI and MAP@R: ``cub-zeroshot`` (100/100 classes), ``cars-zeroshot``
(98/98), ``sop-zeroshot`` (11,318/11,316), ``fashion-mnist-zeroshot`` (classes 0-4 /
5-9; the unseen test images, all-vs-all).

A directory in ImageFolder layout (any path) gets ``all-vs-all``: every image queries
all the others (the frozen backbone learns nothing from them). A model trained on such a
folder needs held-out images: :func:`split_folder` draws a seeded split, ``same-classes``
(stratified: each class's images are divided between training and held-out) or
``zero-shot`` (whole classes held out, as the zero-shot protocols above); the held-out
images query each other. :meth:`Splits.overlap` counts the query images a model was
trained on; ``cbir train`` and ``cbir evaluate`` refuse an overlap unless asked
(``--eval-on-train``), and then warn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from cbir.data.base import Dataset, ImageSet
from cbir.errors import CbirError


@dataclass
class Splits:
    """What a protocol evaluates: ``database=None`` means all-vs-all within ``query``."""

    train: ImageSet | None
    query: ImageSet
    database: ImageSet | None

    def sizes(self) -> dict[str, int]:
        return {
            "train": 0 if self.train is None else len(self.train),
            "query": len(self.query),
            "database": len(self.query) - 1 if self.database is None else len(self.database),
        }

    def overlap(self, train_keys: Any = None) -> int:
        """How many query images are training images (of ``train_keys``, default this
        split's training set). The hashing protocols' database may be the training set
        (the papers' convention); the queries never are."""
        if train_keys is None:
            if self.train is None:
                return 0
            train_keys = self.train.keys
        seen = set(train_keys)
        return sum(k in seen for k in self.query.keys)


@dataclass(frozen=True)
class Protocol:
    """A named, reproducible split and the figures it reports.

    Args:
        name: protocol name (``cbir evaluate --protocol``).
        dataset: the registered dataset layout it reads.
        description: splits, sizes and source, for reports.
        build: ``build(dataset, seed) -> Splits``.
        kind: "hashing" (mAP@all / mAP@k, P@k, P@H<=2) or "zeroshot" (Recall@K, NMI, MAP@R).
        map_at: the mAP cut-off the papers report (None: mAP@all).
        size: backbone input size used by default for this dataset.
    """

    name: str
    dataset: str
    description: str
    build: Callable[[Dataset, int], Splits]
    kind: str = "hashing"
    map_at: int | None = None
    size: int = 224
    extra: dict[str, Any] = field(default_factory=dict)


def _per_class_sample(
    labels: np.ndarray, per_class: int, rng: np.random.Generator, pool: np.ndarray
) -> np.ndarray:
    """``per_class`` indices of each class from ``pool`` (multi-hot: by each item's first label)."""
    lab = labels if labels.ndim == 1 else labels.argmax(1)
    out = []
    for c in np.unique(lab[pool]):
        members = pool[lab[pool] == c]
        if len(members) < per_class:
            raise CbirError(
                f"class {c} has {len(members)} images, fewer than the {per_class} the protocol needs"
            )
        out.append(rng.choice(members, per_class, replace=False))
    return np.sort(np.concatenate(out))


def _concat(a: ImageSet, b: ImageSet, name: str) -> ImageSet:
    n = len(a)
    la, lb = a.loader, b.loader
    return ImageSet(
        name=name,
        labels=np.concatenate([a.labels, b.labels]),
        loader=lambda i: la(i) if i < n else lb(i - n),
        keys=list(a.keys) + list(b.keys),
        paths=None if a.paths is None or b.paths is None else list(a.paths) + list(b.paths),
        class_names=a.class_names,
    )


def _classes(images: ImageSet, keep: set[int], name: str) -> ImageSet:
    return images.subset(np.flatnonzero(np.isin(images.labels, sorted(keep))), name)


# ---------------------------------------------------------------- builders
def _train_db_test_query(ds: Dataset, seed: int) -> Splits:
    return Splits(train=ds["train"], query=ds["test"], database=ds["train"])


def _cifar10(ds: Dataset, seed: int) -> Splits:
    everything = _concat(ds["train"], ds["test"], f"{ds.name}/all")
    rng = np.random.default_rng(seed)
    pool = np.arange(len(everything))
    q = _per_class_sample(everything.labels, 100, rng, pool)
    rest = np.setdiff1d(pool, q)
    tr = _per_class_sample(everything.labels, 500, rng, rest)
    db = np.setdiff1d(rest, tr)
    return Splits(
        train=everything.subset(tr, f"{ds.name}/p-train"),
        query=everything.subset(q, f"{ds.name}/p-query"),
        database=everything.subset(db, f"{ds.name}/p-database"),
    )


def _nuswide21(ds: Dataset, seed: int) -> Splits:
    if ds["query"].labels.shape[1] != 21:
        raise CbirError(
            f"nuswide-21 needs the 21-concept lists; {ds.root} has {ds['query'].labels.shape[1]} concepts"
        )
    train = ds.splits.get("train")
    return Splits(train=train, query=ds["query"], database=ds["database"])


def _zeroshot(ds: Dataset, seed: int) -> Splits:
    return Splits(train=ds["zs-train"], query=ds["zs-test"], database=None)


def _sop_zeroshot(ds: Dataset, seed: int) -> Splits:
    return Splits(train=ds["train"], query=ds["test"], database=None)


def _fashion_zeroshot(ds: Dataset, seed: int) -> Splits:
    seen, unseen = set(range(5)), set(range(5, 10))
    return Splits(
        train=_classes(ds["train"], seen, f"{ds.name}/train-0-4"),
        query=_classes(ds["test"], unseen, f"{ds.name}/test-5-9"),
        database=None,
    )


def _fashion_zeroshot_val(ds: Dataset, seed: int) -> Splits:
    """Validation for fashion-mnist-zeroshot: within its seen classes, fit on 0-2 and
    query 3-4 (training split only: the test split and classes 5-9 are never read)."""
    return Splits(
        train=_classes(ds["train"], {0, 1, 2}, f"{ds.name}/train-0-2"),
        query=_classes(ds["train"], {3, 4}, f"{ds.name}/train-3-4"),
        database=None,
    )


def _all_vs_all(ds: Dataset, seed: int) -> Splits:
    if "train" in ds.splits and "test" in ds.splits:
        return Splits(train=ds["train"], query=ds["test"], database=None)
    images = ds["all"]
    return Splits(train=images, query=images, database=None)


# ------------------------------------------------------------- folder splits
#: The splits a folder without train/ and test/ can be given (``--split``).
FOLDER_SPLITS = ("same-classes", "zero-shot")
#: The split a model trained on such a folder gets unless told otherwise.
DEFAULT_SPLIT = "same-classes"


def split_folder(images: ImageSet, mode: str, seed: int = 0, train_fraction: float = 0.5) -> Splits:
    """A seeded split of a folder's images into training images and held-out images that
    query each other (all-vs-all).

    ``same-classes``: within each class, ``train_fraction`` of its images (rounded; at least
    one each side for a class of two or more, a lone image is held out; halves round up)
    are for training.
    ``zero-shot``: ``train_fraction`` of the classes (at least one each side) are for
    training, the others are held out whole (Oh Song et al., CVPR 2016).
    """
    if mode not in FOLDER_SPLITS:
        raise CbirError(f"unknown split {mode!r}; known: {', '.join(FOLDER_SPLITS)}")
    if not 0.0 < train_fraction < 1.0:
        raise CbirError(f"--train-fraction must be between 0 and 1, got {train_fraction}")
    if images.multilabel:
        raise CbirError(f"{images.name}: --split needs one class per image")
    labels = np.asarray(images.labels)
    classes = np.unique(labels)
    rng = np.random.default_rng([seed, 1701])
    if mode == "zero-shot":
        if len(classes) < 2:
            raise CbirError(f"{images.name}: a zero-shot split needs at least 2 classes")
        n = min(max(_half_up(len(classes) * train_fraction), 1), len(classes) - 1)
        seen = rng.permutation(classes)[:n]
        train = np.flatnonzero(np.isin(labels, seen))
    else:
        parts = []
        for c in classes:
            members = rng.permutation(np.flatnonzero(labels == c))
            m = len(members)
            n = 0 if m < 2 else min(max(_half_up(m * train_fraction), 1), m - 1)
            parts.append(members[:n])
        train = np.sort(np.concatenate(parts))
    held = np.setdiff1d(np.arange(len(labels)), train)
    tag = f"{images.name}-{mode}-f{train_fraction:g}-s{seed}"
    return Splits(
        train=images.subset(train, f"{tag}-train"),
        query=images.subset(held, f"{tag}-heldout"),
        database=None,
    )


def _half_up(x: float) -> int:
    """``x`` rounded half up (3.5 -> 4, 2.5 -> 3; Python's round() gives 2)."""
    return int(np.floor(x + 0.5 + 1e-9))


def _n_classes(images: ImageSet | None) -> int:
    if images is None:
        return 0
    lab = np.asarray(images.labels)
    return int(lab.shape[1]) if lab.ndim == 2 else len(np.unique(lab))


def split_line(proto: Protocol, splits: Splits) -> str:
    """One line naming the split and its sizes, as ``cbir train`` / ``evaluate`` print it."""
    q = splits.query
    if splits.database is None:
        who = "held-out images" if splits.train is not None and not splits.overlap() else "images"
        held = f"{len(q)} {who} ({_n_classes(q)} classes) query each other"
    else:
        same = " (the training images)" if splits.database is splits.train else ""
        held = f"{len(q)} queries, database {len(splits.database)}{same}"
    train = splits.train
    trained = (
        f"{len(train)} training images ({_n_classes(train)} classes), " if train is not None else ""
    )
    return f"{proto.name}: {trained}{held}"


#: Input size for 28 px Fashion-MNIST: the frozen baseline's mAP rises with the size
#: (3k/500 subset: 0.49 at 64 px, 0.54 at 128, 0.57 at 224, centred); 224 is kept.
FASHION_SIZE = 224

PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in [
        Protocol(
            "fashion-mnist",
            "fashion-mnist",
            "Fashion-MNIST: 60,000 train images = training set and database, 10,000 test "
            "images = queries; mAP@all (tie-aware)",
            _train_db_test_query,
            size=FASHION_SIZE,
        ),
        Protocol(
            "fashion-mnist-zeroshot",
            "fashion-mnist",
            "Fashion-MNIST zero-shot: train on the 30,000 train images of classes 0-4; "
            "evaluate all-vs-all on the 5,000 test images of unseen classes 5-9",
            _fashion_zeroshot,
            kind="zeroshot",
            size=FASHION_SIZE,
        ),
        Protocol(
            "fashion-mnist-zeroshot-val",
            "fashion-mnist",
            "Validation for fashion-mnist-zeroshot (choose settings here): train on the 18,000 "
            "train images of classes 0-2, evaluate all-vs-all on the 12,000 of classes 3-4",
            _fashion_zeroshot_val,
            kind="zeroshot",
            size=FASHION_SIZE,
        ),
        Protocol(
            "cifar10",
            "cifar10",
            "CIFAR-10 (DeepHash-pytorch 'cifar10'): from all 60,000 images, 1,000 queries "
            "(100/class), 5,000 training images (500/class), database = the other 54,000; "
            "mAP@all",
            _cifar10,
        ),
        Protocol(
            "cifar10-all",
            "cifar10",
            "CIFAR-10: 10,000 test images = queries, 50,000 train images = training set and "
            "database; mAP@all",
            _train_db_test_query,
        ),
        Protocol(
            "nuswide-21",
            "nuswide",
            "NUS-WIDE, 21 concepts (HashNet lists): 2,100 queries, 10,500 training images, "
            "193,734 database; mAP@5000; relevant = share a concept",
            _nuswide21,
            map_at=5000,
        ),
        Protocol(
            "cub-hashing",
            "cub200",
            "CUB-200-2011 (Image-Retrieve): train split (5,994) = training set and "
            "database, test split (5,794) = queries; mAP@all",
            _train_db_test_query,
        ),
        Protocol(
            "cub-zeroshot",
            "cub200",
            "CUB-200-2011 zero-shot: train on classes 1-100 (5,864), evaluate all-vs-all "
            "on classes 101-200 (5,924)",
            _zeroshot,
            kind="zeroshot",
        ),
        Protocol(
            "cars-zeroshot",
            "cars196",
            "Cars196 zero-shot: train on classes 1-98 (8,054), evaluate all-vs-all on "
            "classes 99-196 (8,131)",
            _zeroshot,
            kind="zeroshot",
        ),
        Protocol(
            "sop-zeroshot",
            "sop",
            "Stanford Online Products: train on 11,318 classes (59,551), evaluate "
            "all-vs-all on 11,316 unseen classes (60,502)",
            _sop_zeroshot,
            kind="zeroshot",
        ),
    ]
}

ALL_VS_ALL = Protocol(
    "all-vs-all",
    "imagefolder",
    "every image queries all the others (the test split where train/ and test/ exist);"
    " a trained model gets a seeded split: --split same-classes (default) or zero-shot",
    _all_vs_all,
    kind="zeroshot",
)


def protocols() -> list[Protocol]:
    return list(PROTOCOLS.values())


def default_protocol(dataset: str) -> Protocol:
    """The protocol used for ``--dataset NAME`` when none is named."""
    if dataset in PROTOCOLS:
        return PROTOCOLS[dataset]
    for p in PROTOCOLS.values():
        if p.dataset == dataset:
            return p
    return ALL_VS_ALL


def get_protocol(name: str) -> Protocol:
    if name in PROTOCOLS:
        return PROTOCOLS[name]
    if name == ALL_VS_ALL.name:
        return ALL_VS_ALL
    raise CbirError(f"unknown protocol {name!r}; known: {', '.join([*PROTOCOLS, ALL_VS_ALL.name])}")


def is_unsplit(proto: Protocol, ds: Dataset) -> bool:
    """True for a folder without train/ and test/ (all its images in one "all" split)."""
    return proto.name == ALL_VS_ALL.name and not ("train" in ds.splits and "test" in ds.splits)


def resolve(
    dataset: str,
    protocol: str | None = None,
    seed: int = 0,
    split: str | None = None,
    train_fraction: float = 0.5,
) -> tuple[Protocol, Dataset, Splits]:
    """Open ``dataset`` (registered name or path) and build the protocol's splits.

    ``split``: ``same-classes`` or ``zero-shot`` (:func:`split_folder`, with ``seed`` and
    ``train_fraction``) for a folder without train/ and test/; None: the protocol's own
    (such a folder: every image, all-vs-all).
    """
    from pathlib import Path

    from cbir.data.registry import open_dataset

    proto = get_protocol(protocol) if protocol else None
    is_path = Path(dataset).expanduser().exists()
    if proto is None:
        proto = ALL_VS_ALL if is_path else default_protocol(dataset)
    ds = open_dataset(proto.dataset if not is_path and dataset in PROTOCOLS else dataset)
    if split is None:
        return proto, ds, proto.build(ds, seed)
    named, splits = with_split(proto, ds, split, seed, train_fraction, dataset)
    return named, ds, splits


def with_split(
    proto: Protocol, ds: Dataset, split: str, seed: int, train_fraction: float, dataset: str
) -> tuple[Protocol, Splits]:
    """The protocol named after ``split`` and the folder's :func:`split_folder` splits."""
    if not is_unsplit(proto, ds):
        raise CbirError(
            f"--split is for a folder without train/ and test/; {dataset} has its protocol's"
            " splits (see `cbir protocols`): leave out --split"
        )
    splits = split_folder(ds["all"], split, seed, train_fraction)
    named = replace(
        ALL_VS_ALL,
        name=split,
        description=(
            f"{split} split of {dataset} (seed {seed}, train fraction {train_fraction:g}):"
            " the held-out images query each other"
        ),
    )
    return named, splits

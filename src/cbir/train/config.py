"""Configuration of a training run: the settings every method shares, plus the options
of the method's family (one dataclass each).

``config.json`` of a run holds :meth:`TrainConfig.to_dict`: the common fields and an
``options`` object. Runs written before this layout stored one flat object of 36 fields;
:func:`cbir.train.registry.make_config` reads both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

#: Points in the t-SNE map by default (Barnes-Hut t-SNE costs tens of seconds at 2,000).
TSNE_POINTS = 2000


@dataclass
class FinetuneOptions:
    """End-to-end fine-tuning of the backbone with the head (:mod:`cbir.train.finetune`)."""

    backbone_lr: float = 1e-4  # the backbone's learning rate
    freeze_blocks: int = 0  # the stem and this many early MBConv blocks stay frozen
    augment: str = "flip-shift"  # none, flip, or flip-shift


@dataclass
class MethodOptions:
    """Options of one family of methods (a subclass per family)."""

    #: Code kind the family produces: "binary", "float" or "sparse".
    kind: ClassVar[str] = "float"

    @property
    def width(self) -> int:
        """Code length (bits) or embedding dimension."""
        raise NotImplementedError

    def describe(self) -> str:
        """``"64 bits"`` or ``"128-d"`` (plot titles)."""
        from cbir.codes.registry import code_kind

        return code_kind(self.kind).describe(self.width)


@dataclass
class HashingOptions(MethodOptions):
    """Deep hashing (:mod:`cbir.losses.hashing`): a head trained with a hashing loss."""

    kind: ClassVar[str] = "binary"
    bits: int = 64
    loss_options: dict[str, Any] = field(default_factory=dict)
    memory_bank: bool = False  # pairwise losses pair each batch with the whole training set
    sampler: str | None = None
    feedback: str | None = None  # INDEX_DIR whose stored feedback adds pairs (cbir.train.feedback)
    feedback_weight: float = 1.0  # weight of the feedback loss in every batch
    finetune: FinetuneOptions | None = None  # train the backbone end to end too

    @property
    def width(self) -> int:
        return self.bits


@dataclass
class MetricOptions(MethodOptions):
    """Metric learning (:mod:`cbir.losses.metric`): float embeddings."""

    kind: ClassVar[str] = "float"
    dim: int = 128
    loss_options: dict[str, Any] = field(default_factory=dict)
    sampler: str | None = None
    miner: str | None = None
    feedback: str | None = None
    feedback_weight: float = 1.0
    finetune: FinetuneOptions | None = None
    # "mlp" (the plain Head) or "residual" (cbir.heads.residual: starts as the identity / PCA)
    head: str = "mlp"
    head_init: str = "pca"  # the residual head's linear part: "pca", "pca-whiten" or "identity"
    distill: float = 0.0  # weight of the frozen-similarity distillation (losses.metric.distill)
    # the residual head's input centring when it embeds: "train" (the training images' mean)
    # or "collection" (the mean of the images it indexes / evaluates, fitted as the frozen
    # backbone's centring is: cbir.heads.learned.LearnedTransform.fit)
    center: str = "train"
    # the power of the collection's spectral weighting of the outputs, fitted on the
    # collection with its mean (cbir.heads.base.spectral_weighting; 0: none)
    spectral: float = 0.0
    # how the embedding reaches --dim: "head" (the head's linear part maps to dim) or
    # "collection" (the head stays in the feature space, starting as the identity, and its
    # outputs are projected on the collection's top dim principal axes, fitted with its mean)
    reduce: str = "head"

    @property
    def width(self) -> int:
        return self.dim


#: The defaults of `cbir train` where the method family is metric learning, chosen on the
#: seen-class validation of benchmarks/metric_recipe.py --validate (docs/metric-learning.md):
#: a residual head that stays in the backbone's feature space and starts as the identity,
#: with a linear branch, a small learning rate, the frozen similarities distilled into every
#: batch, its inputs centred on the mean of the collection it embeds (as the frozen
#: backbone's), and its outputs reduced to --dim on the collection's principal axes and
#: weighted by the collection's spectrum (--reduce collection --spectral 0.4, fitted with
#: that mean), distillation weight 4, after 5 epochs.
METRIC_RECIPE: dict[str, Any] = {
    "epochs": 5,
    "lr": 1e-4,
    "hidden": [],
    "head": "residual",
    "head_init": "identity",
    "distill": 4.0,
    "center": "collection",
    "spectral": 0.4,
    "reduce": "collection",
}
#: The defaults of `cbir train` for every other family.
TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 30,
    "lr": 1e-3,
    "hidden": [1024],
    "head": "mlp",
    "head_init": "pca",
    "distill": 0.0,
    "center": "train",
    "spectral": 0.0,
    "reduce": "head",
}


@dataclass
class UnsupervisedOptions(MethodOptions):
    """LSH, ITQ and the binary autoencoder (:mod:`cbir.unsupervised`)."""

    kind: ClassVar[str] = "binary"
    bits: int = 64

    @property
    def width(self) -> int:
        return self.bits


@dataclass
class SparseOptions(MethodOptions):
    """Sparse codes for the inverted index (:mod:`cbir.train.methods.sparse`)."""

    kind: ClassVar[str] = "sparse"
    dim: int = 128
    loss_options: dict[str, Any] = field(default_factory=dict)  # k, l1, supervised, temperature

    @property
    def width(self) -> int:
        return self.dim


@dataclass
class JointOptions(MethodOptions):
    """A joint image-text space (VSE++, :mod:`cbir.train.methods.joint`)."""

    kind: ClassVar[str] = "float"
    dim: int = 128
    captions: str | None = None  # the caption file (cbir.data.captions)
    text_hidden: list[int] = field(default_factory=list)  # hidden widths of the text head
    loss_options: dict[str, Any] = field(default_factory=dict)  # margin, max_violation, ...

    @property
    def width(self) -> int:
        return self.dim


@dataclass
class DCMHOptions(MethodOptions):
    """Images and captions in one Hamming space (DCMH, :mod:`cbir.train.methods.dcmh`)."""

    kind: ClassVar[str] = "binary"
    bits: int = 64
    captions: str | None = None  # the caption file (cbir.data.captions)
    text_hidden: list[int] = field(default_factory=list)  # hidden widths of the text head
    loss_options: dict[str, Any] = field(default_factory=dict)  # gamma, eta

    @property
    def width(self) -> int:
        return self.bits


@dataclass
class SketchOptions(MethodOptions):
    """A sketch branch into the image backbone's space (:mod:`cbir.train.methods.sketch`)."""

    kind: ClassVar[str] = "float"
    loss_options: dict[str, Any] = field(default_factory=dict)  # temperature, instance
    sketches: int = 2  # drawings per training image (seeds 0..sketches-1)

    @property
    def width(self) -> int:
        return 1280  # the backbone's feature space


@dataclass
class TrainConfig:
    """Everything a run depends on (saved as config.json): the common settings and the
    method family's ``options``.

    Schedules: "constant", "cosine", and "warmup-invsqrt" (linear warm-up for ``warmup``
    steps, then ``lr * sqrt(warmup / step)``, the Transformer schedule Image-Retrieve
    trains hashing heads with).
    """

    dataset: str = "fashion-mnist"
    protocol: str | None = None
    method: str = "csq"
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    optimizer: str = "adam"
    schedule: str = "cosine"
    warmup: int = 200
    weight_decay: float = 1e-5
    hidden: list[int] = field(default_factory=lambda: [1024])
    dropout: float = 0.1
    batchnorm: bool = False
    seed: int = 0
    size: int | None = None
    train_limit: int | None = None
    query_limit: int | None = None
    database_limit: int | None = None
    eval_every: int = 5
    eval_queries: int = 1000
    tsne_points: int = TSNE_POINTS  # query images in tsne.png (0: no t-SNE map)
    holdout: int = 0  # validation: this many training images query the rest of the training set
    # a folder without train/ and test/: "same-classes" or "zero-shot" (cbir.eval.protocols;
    # None: same-classes), train_fraction of its images / classes; eval_on_train: no split,
    # the figures then score the training images (with a warning)
    split: str | None = None
    train_fraction: float = 0.5
    eval_on_train: bool = False
    options: MethodOptions = field(default_factory=HashingOptions)

    def kind(self) -> str:
        """The code kind of the run: "binary", "float" or "sparse"."""
        return self.options.kind

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (config.json): common fields and ``options``."""
        return asdict(self)

    def flat(self) -> dict[str, Any]:
        """The 36-field flat form runs stored before options had a class of their own
        (plus the options added since, where they are not at their default)."""
        out = {k: v for k, v in self.to_dict().items() if k != "options"}
        out.update(FLAT_DEFAULTS)
        opts = asdict(self.options)
        ft = opts.pop("finetune", None)
        out.update(opts)
        out["finetune"] = ft is not None
        if ft is not None:
            out.update(ft)
        # options newer than the flat form appear only where they are not at their default
        newer = {f.name: f.default for f in fields(self.options) if f.name not in FLAT_DEFAULTS}
        newer.update({f.name: f.default for f in fields(self) if f.name in NEWER_COMMON})
        for k, default in newer.items():
            if k in out and out[k] == default:
                del out[k]
        return out


#: Common fields added after the flat form (issue 17 splits): in it only when not at default.
NEWER_COMMON = ("split", "eval_on_train", "train_fraction")
#: The method fields of the old flat config, with their defaults.
FLAT_DEFAULTS: dict[str, Any] = {
    "bits": 64,
    "dim": 128,
    "loss_options": {},
    "sampler": None,
    "miner": None,
    "memory_bank": False,
    "feedback": None,
    "feedback_weight": 1.0,
    "captions": None,
    "text_hidden": [],
    "finetune": False,
    **asdict(FinetuneOptions()),
}
COMMON = tuple(f.name for f in fields(TrainConfig) if f.name != "options")

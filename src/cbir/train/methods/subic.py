"""SUBIC (Jain et al., "SUBIC: A supervised, structured binary code for image search",
ICCV 2017): a hashing-family method whose codes are M blocks of K-way one-hot.

``cbir train --method subic --bits 64`` trains 64 bits of information: ``M = bits / log2 K``
blocks of ``K`` (``--loss-option k=256``, the default: 8 blocks of 256, the paper's
ImageNet code). The head (:class:`~cbir.heads.head.Head`) outputs ``M * K`` logits, trained
with :class:`cbir.losses.hashing.subic.SUBIC` (``--loss-option gamma=...``, ``mu=...``);
an index built with the run stores SUBIC codes (:mod:`cbir.codes.subic`, code kind
``subic-k<K>``) and searches them asymmetrically (``--index-type ADC``) or symmetrically
(``SDC``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from cbir.codes.registry import code_kind
from cbir.codes.subic import BLOCK_SIZES
from cbir.errors import CbirError
from cbir.heads.head import Head
from cbir.losses.hashing.subic import SUBIC
from cbir.train.config import HashingOptions, TrainConfig
from cbir.train.methods.supervised import HashingHead, HashingMethod

#: The paper's block size (ImageNet: 8 blocks of 256 = 64 bits).
DEFAULT_K = 256


@dataclass
class SubicOptions(HashingOptions):
    """The hashing options; ``bits`` counts bits of information (``M log2 K``), the block
    size K and the entropy weights are loss options (``k``, ``gamma``, ``mu``)."""

    @property  # type: ignore[override]
    def kind(self) -> str:  # type: ignore[override]
        return f"subic-k{self.block_size}"

    @property
    def block_size(self) -> int:
        return int(self.loss_options.get("k", DEFAULT_K))

    @property
    def blocks(self) -> int:
        return self.bits // int(math.log2(self.block_size))

    @property
    def outputs(self) -> int:
        """Columns of the head: ``M * K``."""
        return self.blocks * self.block_size

    def describe(self) -> str:
        return code_kind(self.kind).describe(self.outputs)


def check_options(opts: SubicOptions) -> None:
    """A block size with a code kind, and bits that are whole blocks; else CbirError."""
    k = opts.loss_options.get("k", DEFAULT_K)
    if k not in BLOCK_SIZES:
        raise CbirError(
            f"--loss-option k={k}: SUBIC blocks have K in {', '.join(map(str, BLOCK_SIZES))}"
        )
    b = int(math.log2(k))
    if opts.bits <= 0 or opts.bits % b:
        raise CbirError(
            f"--bits {opts.bits} is not a whole number of {k}-way blocks ({b} bits each);"
            f" use a multiple of {b}"
        )
    unknown = set(opts.loss_options) - {"k", "gamma", "mu"}
    if unknown:
        raise CbirError(f"SUBIC has no loss option {', '.join(sorted(unknown))}; use k, gamma, mu")
    if opts.memory_bank or opts.feedback:
        raise CbirError("SUBIC trains on classes of single images: drop --memory-bank/--feedback")


class SubicHead(HashingHead):
    """A head of ``M * K`` outputs and the SUBIC loss (with its classifier)."""

    loss_fn: SUBIC  # type: ignore[assignment]

    def make_head(self) -> nn.Module:
        cfg = self.cfg
        opts: Any = cfg.options
        return Head(self.x.shape[1], opts.outputs, cfg.hidden, cfg.dropout, cfg.batchnorm)

    def make_loss(self, n_classes: int, n_train: int) -> nn.Module:
        opts: Any = self.cfg.options
        kw = {k: v for k, v in opts.loss_options.items() if k != "k"}
        return SUBIC(opts.outputs, n_classes, k=opts.block_size, **kw)

    def step(self, batch: Any) -> tuple[Tensor, float, dict[str, float]]:
        loss, n, values = super().step(batch)
        return loss, n, {**values, **self.loss_fn.last}


class SubicMethod(HashingMethod):
    """SUBIC's structured binary codes (a method of the hashing family with its own code kind)."""

    name = "subic"
    options = SubicOptions
    model = SubicHead

    def names(self) -> tuple[str, ...]:
        return ("subic",)

    def prepare(self, cfg: TrainConfig) -> None:
        check_options(cfg.options)  # type: ignore[arg-type]

"""End-to-end fine-tuning of the backbone with the head (``cbir train --finetune``).

The default trains a head on cached frozen features. With ``--finetune`` the same
trainer loop (one loop for every supervised method, hashing or metric learning) asks
this module for each batch's features instead: the training images go through
EfficientNet-Lite0 in PyTorch (with light augmentation), so the loss's gradient reaches
the backbone too, at its own learning rate (``--backbone-lr``). This is how the deep
hashing papers train (DSH, Liu et al. CVPR 2016; HashNet, Cao et al. ICCV 2017; CSQ,
Yuan et al. CVPR 2020 all fine-tune an ImageNet CNN end to end); on a CPU it is meant
for low input sizes (``--size 64`` or 96 for 28 px images).

- ``--freeze-blocks N`` keeps the stem and the first N of the 16 MBConv blocks frozen
  (eval mode, no gradients). Their outputs are then computed once and kept in memory as
  float16 (for the image and its mirror image when ``--augment flip``), so an epoch runs
  only the trainable blocks; with ``--augment flip-shift`` (random mirror and shift by up
  to 1/8 of the side) the frozen blocks run on every augmented batch, without gradients.
- Batch norm keeps its ImageNet running statistics (frozen statistics, trainable scale
  and shift, as detection backbones are fine-tuned): batch statistics of upsampled 28 px
  images differ from them by a factor of ~3 in the features, so a short run in train-mode
  batch norm would learn on features that indexing (eval mode) never produces.
- At the end the fine-tuned backbone is written as ``RUN_DIR/backbone.pt`` (a state
  dict); its digest is the ``weights`` of the run's backbone fingerprint. Indexing and
  evaluating with the run export it once to ONNX (cached under the cache dir by that
  digest) and embed on onnxruntime, as with the frozen backbone; the run checks here
  that the ONNX features equal the PyTorch model's.
"""

from __future__ import annotations

import dataclasses
import io
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cbir.backbones.cache import dataset_features
from cbir.backbones.efficientnet_lite import load_torch_model
from cbir.backbones.preprocess import Preprocess
from cbir.backbones.registry import open_backbone
from cbir.errors import CbirError
from cbir.heads.learned import BACKBONE_FILE
from cbir.train.config import FinetuneOptions, TrainConfig
from cbir.train.data import run_splits
from cbir.utils import atomic_write_bytes

AUGMENT = ("none", "flip", "flip-shift")
#: Largest frozen-block output kept in memory (bytes); beyond it the blocks run per batch.
CACHE_LIMIT = 6 << 30
EMBED_BATCH = 256


def decode_images(images: Any, pre: Preprocess, workers: int = 2) -> np.ndarray:
    """``(n, size, size, 3)`` uint8 backbone inputs of every image of an ImageSet."""
    n = len(images)
    out = np.empty((n, pre.size, pre.size, 3), np.uint8)

    def one(i: int) -> None:
        out[i] = pre(images.load(i))

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(one, range(n)))
    return out


class _Bank:
    """The decoded images of one split and, when the prefix is frozen, its cached output."""

    def __init__(self, pixels: np.ndarray, cache: Tensor | None) -> None:
        self.pixels = pixels  # (n, s, s, 3) uint8
        self.cache = cache  # (views, n, C, H, W) float16, or None

    def __len__(self) -> int:
        return len(self.pixels)


class Finetune:
    """The backbone side of an end-to-end run: features of training batches, parameter
    groups, and the fine-tuned backbone file at the end.

    Args:
        cfg: the run's configuration (``size``, ``seed``, the splits).
        options: ``backbone_lr``, ``freeze_blocks``, ``augment``.
        show: print progress to stderr.
    """

    def __init__(self, cfg: TrainConfig, options: FinetuneOptions, show: bool = False) -> None:
        if options.augment not in AUGMENT:
            raise CbirError(
                f"--augment must be one of {', '.join(AUGMENT)}, got {options.augment!r}"
            )
        if getattr(cfg.options, "feedback", None):
            raise CbirError(
                "--feedback pairs are frozen-backbone features; use it without --finetune"
            )
        self.cfg = cfg
        self.options = options
        self.show = show
        self.proto, _ds, self.train_set, self.query_set, self.database_set = run_splits(cfg)
        self.size = int(cfg.size or self.proto.size)
        self.pre = Preprocess(size=self.size)
        self.model = load_torch_model()
        blocks = self.model._blocks
        if not 0 <= options.freeze_blocks <= len(blocks):
            raise CbirError(
                f"--freeze-blocks must be between 0 and {len(blocks)}, got {options.freeze_blocks}"
            )
        self.freeze = int(options.freeze_blocks)
        self.rng = np.random.default_rng([cfg.seed, 7])
        self.trainable = self._trainable_modules()
        for p in self.model.parameters():
            p.requires_grad_(False)
        for mod in self.trainable:
            for p in mod.parameters():
                p.requires_grad_(True)
        self._log(f"fine-tuning {self.n_trainable:,} backbone parameters ({self.describe()})")
        self.train_bank = self._bank(self.train_set, views=2 if options.augment == "flip" else 1)
        self._eval_banks: dict[str, _Bank] = {}

    # ------------------------------------------------------------ structure
    def _trainable_modules(self) -> list[torch.nn.Module]:
        m = self.model
        mods: list[torch.nn.Module] = [m._conv_stem, m._bn0] if self.freeze == 0 else []
        return mods + list(m._blocks[self.freeze :]) + [m._conv_head, m._bn1]

    @property
    def n_trainable(self) -> int:
        return sum(p.numel() for mod in self.trainable for p in mod.parameters())

    def describe(self) -> str:
        frozen = (
            "nothing frozen" if self.freeze == 0 else f"stem and blocks 0-{self.freeze - 1} frozen"
        )
        return f"{self.size} px, {frozen}, augment {self.options.augment}"

    @staticmethod
    def input_std(std: np.ndarray) -> np.ndarray:
        """The head's input scales, floored at a tenth of their mean: units that are dead
        (constant) on the frozen backbone's features come alive during fine-tuning."""
        return np.maximum(std, 0.1 * float(np.mean(std))).astype(np.float32)

    def param_groups(self) -> list[dict[str, Any]]:
        """The trainable backbone parameters, at ``backbone_lr``."""
        params = [p for mod in self.trainable for p in mod.parameters()]
        return [{"params": params, "lr": float(self.options.backbone_lr)}]

    def train(self) -> None:
        """Training mode for the trainable blocks (drop connect), batch norm frozen."""
        self.model.eval()
        for mod in self.trainable:
            mod.train()
            for sub in mod.modules():
                if isinstance(sub, torch.nn.modules.batchnorm._BatchNorm):
                    sub.eval()

    def eval(self) -> None:
        self.model.eval()

    def _log(self, msg: str) -> None:
        if self.show:
            print(msg, file=sys.stderr)

    # ------------------------------------------------------------ forward
    def _normalize(self, pixels: np.ndarray) -> Tensor:
        x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float()
        return (x - self.pre.mean) * (1.0 / self.pre.std)

    def _prefix(self, x: Tensor) -> Tensor:
        """Stem and frozen blocks (no gradients); the identity when nothing is frozen."""
        if self.freeze == 0:
            return x
        m = self.model
        with torch.no_grad():
            h = m._swish(m._bn0(m._conv_stem(x)))
            for b in m._blocks[: self.freeze]:
                h = b(h)
        return h

    def _tail(self, h: Tensor) -> Tensor:
        """Trainable blocks, head convolution, global average pool: ``(n, 1280)``."""
        m = self.model
        if self.freeze == 0:
            h = m._swish(m._bn0(m._conv_stem(h)))
        rate = m._global_params.drop_connect_rate or 0.0
        nb = len(m._blocks)
        for i in range(self.freeze, nb):
            h = m._blocks[i](h, drop_connect_rate=rate * i / nb if rate else None)
        return m._swish(m._bn1(m._conv_head(h))).mean(dim=(2, 3))

    def _augment(self, x: Tensor) -> Tensor:
        n, s = len(x), x.shape[-1]
        flip = torch.from_numpy(self.rng.random(n) < 0.5)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        if self.options.augment == "flip-shift":
            p = max(1, s // 8)
            xp = F.pad(x, (p, p, p, p), mode="replicate")
            off = self.rng.integers(0, 2 * p + 1, size=(n, 2))
            x = torch.stack([xp[i, :, dy : dy + s, dx : dx + s] for i, (dy, dx) in enumerate(off)])
        return x

    def inputs(self, idx: Tensor, mean: np.ndarray, std: np.ndarray) -> Tensor:
        """Standardised backbone features of training images ``idx`` (with gradients)."""
        bank = self.train_bank
        i = idx.numpy()
        if bank.cache is not None:
            view = (
                self.rng.integers(0, bank.cache.shape[0], size=len(i))
                if bank.cache.shape[0] > 1
                else np.zeros(len(i), np.int64)
            )
            h = bank.cache[torch.from_numpy(view), idx].float()
        else:
            x = self._normalize(bank.pixels[i])
            if self.options.augment != "none":
                x = self._augment(x)
            h = self._prefix(x)
        f = self._tail(h)
        return (f - torch.from_numpy(np.asarray(mean, np.float32))) / torch.from_numpy(
            np.asarray(std, np.float32)
        )

    # ------------------------------------------------------------ banks
    def _bank(self, images: Any, views: int) -> _Bank:
        """Decode ``images``; cache the frozen prefix's output where it fits in memory."""
        self._log(f"decoding {len(images)} images of {images.name} at {self.size} px")
        pixels = decode_images(images, self.pre)
        if self.freeze == 0 or (self.options.augment == "flip-shift" and images is self.train_set):
            return _Bank(pixels, None)
        probe = self._prefix(self._normalize(pixels[:1]))
        need = views * len(pixels) * probe[0].numel() * 2
        if need > CACHE_LIMIT:
            self._log(f"frozen-block outputs need {need / 2**30:.1f} GiB; computing them per batch")
            return _Bank(pixels, None)
        cache = torch.empty((views, len(pixels), *probe.shape[1:]), dtype=torch.float16)
        self._log(
            f"caching frozen-block outputs of {images.name}: {tuple(cache.shape)}, {need / 2**20:.0f} MiB"
        )
        self.model.eval()
        for v in range(views):
            for a in range(0, len(pixels), EMBED_BATCH):
                x = self._normalize(pixels[a : a + EMBED_BATCH])
                cache[v, a : a + len(x)] = self._prefix(x.flip(3) if v else x).half()
        return _Bank(pixels, cache)

    @torch.no_grad()
    def embed_bank(self, bank: _Bank) -> np.ndarray:
        """Backbone features ``(n, 1280)`` of a bank with the current weights (eval mode)."""
        self.model.eval()
        out = []
        for a in range(0, len(bank), EMBED_BATCH):
            if bank.cache is not None:
                h = bank.cache[0, a : a + EMBED_BATCH].float()
            else:
                h = self._prefix(self._normalize(bank.pixels[a : a + EMBED_BATCH]))
            out.append(self._tail(h).numpy())
        return np.concatenate(out) if out else np.zeros((0, 1280), np.float32)

    def _eval_bank(self, images: Any) -> _Bank:
        if images is self.train_set or list(images.keys) == list(self.train_set.keys):
            if self.train_bank.cache is None or self.train_bank.cache.shape[0] == 1:
                return self.train_bank
            return _Bank(self.train_bank.pixels, self.train_bank.cache[:1])
        key = f"{images.name}-{len(images)}"
        if key not in self._eval_banks:
            self._eval_banks[key] = self._bank(images, views=1)
        return self._eval_banks[key]

    def eval_data(self, data: Any, limit: int | None) -> Any:
        """``data`` with query and database features of the current backbone (torch);
        the query subset is the one :func:`~cbir.train.data.evaluate_transform` takes."""
        query = self.query_set
        ql = data.query_labels
        if limit and limit < len(query):
            idx = np.random.default_rng(0).choice(len(query), limit, replace=False)
            query, ql = query.subset(idx, f"{query.name}-eval{limit}"), ql[idx]
        q = self.embed_bank(self._eval_bank(query))
        db = (
            None
            if self.database_set is None
            else self.embed_bank(self._eval_bank(self.database_set))
        )
        return dataclasses.replace(data, query=q, query_labels=ql, database=db)

    # ------------------------------------------------------------ the result
    def finish(self, run: Path, data: Any, extra: dict[str, Any]) -> Any:
        """Write ``run/backbone.pt``; return ``data`` with the fine-tuned backbone's
        fingerprint and query / database features (its ONNX export, cached)."""
        self.eval()
        buf = io.BytesIO()
        torch.save({k: v.detach().clone() for k, v in self.model.state_dict().items()}, buf)
        path = Path(run) / BACKBONE_FILE
        atomic_write_bytes(path, buf.getvalue())
        backbone = open_backbone(size=self.size, weights=path)  # exports the ONNX graph once
        check = self.train_bank.pixels[: min(16, len(self.train_bank))]
        onnx_f, _ = backbone.run(check)
        with torch.no_grad():
            torch_f = self.model.extract_features(self._normalize(check)).mean(dim=(2, 3)).numpy()
        diff = float(np.abs(onnx_f - torch_f).max()) if len(check) else 0.0
        if diff > 1e-3:
            raise CbirError(f"{path}: the ONNX export differs from the PyTorch model by {diff:.2e}")
        extra["backbone_file"] = BACKBONE_FILE
        extra["finetune"] = {
            "trainable_parameters": self.n_trainable,
            "freeze_blocks": self.freeze,
            "augment": self.options.augment,
            "size": self.size,
            "onnx_max_abs_diff": diff,
        }

        def feats(images: Any) -> np.ndarray:
            return np.asarray(
                dataset_features(images, size=self.size, progress=self.show, weights=path)
            )

        q = feats(self.query_set)
        db = None if self.database_set is None else feats(self.database_set)
        return dataclasses.replace(data, query=q, database=db, fingerprint=backbone.fingerprint)

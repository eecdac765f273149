"""Deep Cross-Modal Hashing (Jiang and Li, "Deep Cross-Modal Hashing", CVPR 2017):
``cbir train --method dcmh --captions FILE --bits N``.

The joint family's data and heads (:mod:`cbir.train.methods.joint`: standardised backbone
features and MiniLM sentence embeddings, one head each, a caption of its group drawn per
training image each epoch), trained with :func:`cbir.losses.hashing.dcmh.dcmh_loss`; the
outputs' signs are the codes. An index built with the run (``cbir index IMAGES --model
RUN``) holds binary codes, and ``cbir search INDEX --text ...`` embeds the caption with
MiniLM and the text head, takes the signs and searches by Hamming distance.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from cbir.errors import CbirError
from cbir.losses.hashing.dcmh import check_options, dcmh_loss
from cbir.train.config import DCMHOptions, TrainConfig
from cbir.train.joint import JointData
from cbir.train.loop import Model, train_epochs
from cbir.train.methods.joint import JointMethod, JointModel


class DCMHModel(JointModel):
    """The joint heads with the DCMH loss instead of VSE's."""

    def __init__(self, cfg: TrainConfig, data: JointData) -> None:
        super().__init__(cfg, data)
        self.text_groups = torch.from_numpy(data.text_groups.astype("int64"))

    def make_loss(self, cfg: TrainConfig) -> Any:
        self.dcmh_options = check_options(**cfg.options.loss_options)  # type: ignore[attr-defined]
        return dcmh_loss

    def step(self, batch: Any) -> tuple[Tensor, float, dict[str, float]]:
        idx, cap = batch
        f = self.model.image(self.x[torch.from_numpy(idx)])
        g = self.model.text(self.t[torch.from_numpy(cap)])
        loss, parts = self.loss_fn(
            f,
            g,
            self.groups[torch.from_numpy(idx)],
            self.text_groups[torch.from_numpy(cap)],
            **self.dcmh_options,
        )
        return loss, 1, parts


class DCMHMethod(JointMethod):
    """Cross-modal hashing trained on (image, caption) pairs."""

    name = "dcmh"
    options = DCMHOptions

    def names(self) -> tuple[str, ...]:
        return ("dcmh",)

    def prepare(self, cfg: TrainConfig) -> None:
        try:
            check_options(**cfg.options.loss_options)  # type: ignore[attr-defined]
        except (TypeError, ValueError) as e:
            raise CbirError(f"--loss-option for dcmh: {e} (known: gamma, eta)") from None
        bits = cfg.options.width
        if bits <= 0 or bits % 8:
            raise CbirError(f"--bits {bits}: DCMH codes need a positive multiple of 8 bits")

    def fit(self, cfg: TrainConfig, data: Any, show: bool) -> tuple[Model, list[dict[str, Any]]]:
        model = DCMHModel(cfg, data)
        return model, train_epochs(cfg, model, show)

"""Unsupervised binary codes (:mod:`cbir.unsupervised`): LSH (Charikar, STOC 2002), ITQ
(Gong & Lazebnik, CVPR 2011) and a binary autoencoder, each fitted by its own
procedure and expressed as a :class:`~cbir.heads.head.Head`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from cbir.heads.head import Head
from cbir.train.config import TrainConfig, UnsupervisedOptions
from cbir.train.data import TrainData
from cbir.train.loop import Model
from cbir.train.methods.base import Method
from cbir.train.runs import make_checkpoint
from cbir.unsupervised import ITQ, LSH, BinaryAutoencoder

#: (head, input mean, input std, the fit's history: one value per epoch or iteration)
Fitted = tuple[Head, np.ndarray, np.ndarray, list[float]]


def fit_lsh(cfg: TrainConfig, x: np.ndarray) -> Fitted:
    bits = cfg.options.width
    m = LSH(bits, center=True, seed=cfg.seed).fit(x)
    head = Head(x.shape[1], bits)
    head.net[0].weight.data.copy_(torch.from_numpy(m.planes.T.astype(np.float32)))
    head.net[0].bias.data.zero_()
    return head, x.mean(0).astype(np.float64), np.ones(x.shape[1]), []


def fit_itq(cfg: TrainConfig, x: np.ndarray) -> Fitted:
    bits = cfg.options.width
    itq = ITQ(bits, seed=cfg.seed).fit(x)
    assert itq.components is not None and itq.rotation is not None and itq.mean is not None
    head = Head(x.shape[1], bits)
    head.net[0].weight.data.copy_(
        torch.from_numpy((itq.components @ itq.rotation).T.astype(np.float32))
    )
    head.net[0].bias.data.zero_()
    return head, itq.mean, np.ones(x.shape[1]), itq.errors_


def fit_autoencoder(cfg: TrainConfig, x: np.ndarray) -> Fitted:
    hidden = cfg.hidden[0] if cfg.hidden else 256
    bits = cfg.options.width
    ae = BinaryAutoencoder(bits, hidden=hidden, lr=cfg.lr, batch_size=cfg.batch_size)
    ae.fit(x, epochs=cfg.epochs, seed=cfg.seed)
    assert ae.encoder is not None and ae.mean is not None and ae.std is not None
    head = Head(x.shape[1], bits, [hidden])
    head.net.load_state_dict(ae.encoder.state_dict())
    return head, ae.mean, ae.std, ae.history_


FITS: dict[str, Callable[[TrainConfig, np.ndarray], Fitted]] = {
    "lsh": fit_lsh,
    "itq": fit_itq,
    "autoencoder": fit_autoencoder,
}


class FittedHead(Model):
    """A head fitted outside the loop (nothing left to train)."""

    def __init__(self, cfg: TrainConfig, data: TrainData, fitted: Fitted) -> None:
        self.cfg, self.data = cfg, data
        self.head, self.mean, self.std, self.history = fitted

    def checkpoint(self, extra: dict[str, Any]) -> dict[str, Any]:
        self.head.eval()
        fp = self.data.fingerprint
        return make_checkpoint(self.cfg, self.head, self.mean, self.std, fp, extra)


class UnsupervisedMethod(Method):
    """LSH, ITQ and the binary autoencoder: no labels, no training loop of ours."""

    name = "unsupervised"
    options = UnsupervisedOptions

    def names(self) -> tuple[str, ...]:
        return tuple(FITS)

    def fit(self, cfg: TrainConfig, data: Any, show: bool) -> tuple[Model, list[dict[str, Any]]]:
        x = np.ascontiguousarray(data.x, np.float32)
        model = FittedHead(cfg, data, FITS[cfg.method](cfg, x))
        rows = [{"epoch": i + 1, "loss": float(v)} for i, v in enumerate(model.history or [0.0])]
        return model, rows

"""What a family of training methods supplies to the trainer (:mod:`cbir.train.trainer`)."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from cbir.heads.learned import LearnedTransform
from cbir.train.config import MethodOptions, TrainConfig
from cbir.train.data import TrainData, evaluate_transform, load_data
from cbir.train.loop import Model


class Method(ABC):
    """One family of methods: its options, data, model and final evaluation.

    Subclasses set ``name`` (the family) and ``options`` (its options dataclass), and
    implement :meth:`names` and :meth:`fit`.
    """

    name: ClassVar[str]
    options: ClassVar[type[MethodOptions]]
    #: Whether the run draws a t-SNE map of the query embedding (tsne.png).
    tsne: ClassVar[bool] = True

    @abstractmethod
    def names(self) -> tuple[str, ...]:
        """The ``--method`` names this family trains."""

    def prepare(self, cfg: TrainConfig) -> None:
        """Check the options before any feature is computed (raise CbirError)."""
        return None

    def accepts(self, data: Any) -> bool:
        """Whether ``data`` (loaded by the caller) is what :meth:`fit` trains on."""
        return isinstance(data, TrainData)

    def load_data(self, cfg: TrainConfig, progress: bool | None = None) -> Any:
        """The training and evaluation data of a run (cached features)."""
        return load_data(cfg, progress=progress)

    @abstractmethod
    def fit(self, cfg: TrainConfig, data: Any, show: bool) -> tuple[Model, list[dict[str, Any]]]:
        """Train on ``data`` (seeded by the caller): (the model, the rows of metrics.jsonl)."""

    def data_name(self, data: Any) -> str:
        """The protocol (or pair set) name in titles and final.json."""
        return data.protocol.name

    def summary(self, data: Any, model: Model) -> dict[str, Any]:
        """final.json fields after ``train_seconds``."""
        return {"n_train": len(data.x), **model.report}

    def final_eval(self, run: Path, data: Any, show: bool) -> dict[str, Any]:
        """Metrics of the saved run on the full protocol (final.json)."""
        transform = LearnedTransform.from_path(run)
        t1 = time.perf_counter()
        m = evaluate_transform(transform, data, progress=show)
        return {
            "eval_seconds": round(time.perf_counter() - t1, 2),
            "metrics": {k: v for k, v in m.items() if k != "curves"},
            "n_queries": m.get("n_queries"),
            "n_database": m.get("n_database"),
        }

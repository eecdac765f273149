"""The training methods by name, and configurations read from plain dicts.

Each family (:class:`~cbir.train.methods.base.Method`) is registered once here; its
``names()`` are the ``--method`` values it trains. A new family is one module under
``cbir/train/methods/`` plus one line in :data:`FAMILIES`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from cbir.errors import CbirError
from cbir.train.config import COMMON, FLAT_DEFAULTS, FinetuneOptions, TrainConfig
from cbir.train.methods.base import Method
from cbir.train.methods.dcmh import DCMHMethod
from cbir.train.methods.joint import JointMethod
from cbir.train.methods.sketch import SketchMethod
from cbir.train.methods.sparse import SparseMethod
from cbir.train.methods.subic import SubicMethod
from cbir.train.methods.supervised import HashingMethod, MetricMethod
from cbir.train.methods.unsupervised import UnsupervisedMethod

#: The method families, by family name (their order is the order of ``all_methods``).
FAMILIES: dict[str, Method] = {
    m.name: m
    for m in (
        HashingMethod(),
        UnsupervisedMethod(),
        MetricMethod(),
        JointMethod(),
        DCMHMethod(),
        SparseMethod(),
        SketchMethod(),
        SubicMethod(),
    )
}
#: Method name -> its family.
METHODS: dict[str, Method] = {n: m for m in FAMILIES.values() for n in m.names()}
FINETUNE_FIELDS = tuple(f.name for f in fields(FinetuneOptions))


def _option_fields() -> set[str]:
    """Every option field of every family (flat keys any family may read)."""
    return {f.name for m in FAMILIES.values() for f in fields(m.options)}


def register(method: Method) -> None:
    """Add a family of methods (its ``names()`` become ``--method`` values)."""
    FAMILIES[method.name] = method
    METHODS.update({n: method for n in method.names()})


def all_methods() -> tuple[str, ...]:
    return tuple(METHODS)


def get_method(name: str) -> Method:
    """The family that trains method ``name``."""
    if name not in METHODS:
        raise CbirError(f"unknown method {name!r}; known: {', '.join(all_methods())}")
    return METHODS[name]


def make_config(
    config: Mapping[str, Any] | None = None, /, strict: bool = True, **changes: Any
) -> TrainConfig:
    """A :class:`TrainConfig` from a plain dict (and keyword ``changes``): the nested form
    of :meth:`TrainConfig.to_dict`, or the flat form of runs written before (36 fields:
    the common ones and every method's options side by side). Options of other families
    are dropped; ``strict``: unknown keys are an error (else ignored)."""
    d = {**(config or {}), **changes}
    method = get_method(d.get("method", TrainConfig.method))
    unknown = sorted(set(d) - set(COMMON) - set(FLAT_DEFAULTS) - _option_fields() - {"options"})
    if unknown and strict:
        raise CbirError(f"unknown training setting(s) {', '.join(unknown)}")
    nested = dict(d.get("options") or {})
    flat = {k: d[k] for k in {*FLAT_DEFAULTS, *_option_fields()} if k in d}
    # the finetune switch: a nested object or None; a flat boolean with its own fields
    ft = nested.pop("finetune", None)
    ft_flat = {k: flat.pop(k) for k in FINETUNE_FIELDS if k in flat}
    on = flat.pop("finetune", ft is not None)
    ft = {**(ft or {}), **ft_flat} if on else None
    if ft is not None and (nested.get("feedback") or flat.get("feedback")):
        raise CbirError(
            "--feedback trains the head on frozen backbone features; drop --finetune to use it"
        )
    known = {f.name for f in fields(method.options)}
    if ft is not None and "finetune" not in known:
        raise CbirError(
            f"--finetune trains the supervised methods' backbone; {d['method']} has no loss to"
            " fine-tune with"
        )
    opts = {k: v for k, v in {**nested, **flat}.items() if k in known}
    if "finetune" in known:
        opts["finetune"] = None if ft is None else FinetuneOptions(**ft)
    common = {k: d[k] for k in COMMON if k in d}
    return TrainConfig(**common, options=method.options(**opts))


def read_config(run: str | Path) -> TrainConfig:
    """The configuration of a run directory (either form of its config.json)."""
    path = Path(run) / "config.json"
    if not path.exists():
        raise CbirError(f"{run}: no config.json here; is it a `cbir train` run directory?")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CbirError(f"{path}: not JSON ({e.msg}); retrain the run") from e
    return make_config(raw, strict=False)

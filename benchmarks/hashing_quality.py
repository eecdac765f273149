"""Deep hashing quality on Fashion-MNIST: every method x code length.

Protocol ``fashion-mnist`` (60,000 train = database, 10,000 test = queries, mAP@all,
tie-aware), evaluated by ``cbir.eval`` exactly as ``cbir evaluate`` does. Prints mAP,
P@H<=2 and training time per method and code length, and the frozen float baseline
(centred cosine on the same backbone features) for reference.

Heads train on cached backbone features of the frozen ImageNet EfficientNet-Lite0, or,
with ``--backbone RUN_DIR``, of the fine-tuned backbone of a ``cbir train --finetune``
run (its ONNX export; the run's ``backbone.pt``), or are themselves fine-tuned end to
end with ``--finetune``. Settings are chosen on a validation protocol, never on the test
queries: ``--holdout 6000`` makes 6,000 random training images the queries and the
other 54,000 the training set and database.

    python benchmarks/hashing_quality.py [--methods csq,dsh,subic,...] [--bits 16,32,48,64]
        [--size 224] [--epochs 30] [--holdout N] [--set KEY=VALUE ...]
        [--backbone RUN_DIR] [--finetune ...] [--out RUNS_DIR] [--no-baseline]

``--set`` overrides a :class:`~cbir.train.trainer.TrainConfig` field for every run
(``--set lr=3e-4``, ``--set hidden=[2048]``, ``--set loss_options={"alpha":0.1}``);
``--set METHOD:KEY=VALUE`` for one method only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from cbir.train.config import COMMON, FLAT_DEFAULTS
from cbir.train.registry import FAMILIES
from cbir.train.trainer import (
    TrainConfig,
    TrainData,
    evaluate_transform,
    load_data,
    make_config,
    run_splits,
    train,
)

HASHING = FAMILIES["hashing"].names()
UNSUPERVISED = FAMILIES["unsupervised"].names()


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_sets(pairs: list[str]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``KEY=VALUE`` (all runs) and ``METHOD:KEY=VALUE`` (one method) overrides."""
    common: dict[str, Any] = {}
    per: dict[str, dict[str, Any]] = {}
    fields = set(COMMON) | set(FLAT_DEFAULTS)
    for p in pairs:
        key, _, value = p.partition("=")
        method, _, key = key.rpartition(":")
        if key not in fields:
            raise SystemExit(
                f"--set {p}: {key!r} is not a TrainConfig field ({', '.join(sorted(fields))})"
            )
        (per.setdefault(method, {}) if method else common)[key] = _value(value)
    return common, per


def backbone_data(base: TrainConfig, run_dir: str, progress: bool) -> TrainData:
    """The protocol's features from the fine-tuned backbone of ``run_dir`` (ONNX, cached)."""
    from cbir.backbones.cache import dataset_features
    from cbir.backbones.efficientnet_lite import get_backbone
    from cbir.heads.learned import LearnedTransform

    t = LearnedTransform.from_path(run_dir)
    weights = t.backbone_weights
    if weights is None:
        raise SystemExit(f"{run_dir} did not fine-tune its backbone (train it with --finetune)")
    size = t.backbone["preprocess"]["size"]
    if base.size not in (None, size):
        raise SystemExit(f"{run_dir} was fine-tuned at --size {size}, not {base.size}")
    proto, ds, tr, query, database = run_splits(dataclasses.replace(base, size=size))
    feats = lambda s: np.asarray(dataset_features(s, size=size, progress=progress, weights=weights))  # noqa: E731
    y = tr.labels
    return TrainData(
        x=feats(tr),
        y=y,
        n_classes=int(y.max()) + 1,
        query=feats(query),
        query_labels=query.labels,
        database=None if database is None else feats(database),
        database_labels=None if database is None else database.labels,
        protocol=proto,
        fingerprint=get_backbone(size, weights=weights).fingerprint,
    )


def symmetric_map(run: Path, data: TrainData) -> float:
    """mAP of a SUBIC run's symmetric search (one-hot queries against one-hot codes;
    the run's own figures are the asymmetric search's)."""
    from cbir.codes.registry import code_kind
    from cbir.codes.subic import one_hot
    from cbir.eval.metrics import evaluate_retrieval
    from cbir.heads.learned import LearnedTransform

    t = LearnedTransform.from_path(run)
    code: Any = code_kind(t)
    q = one_hot(t(data.query), code.k)
    db = t(data.database)
    m = evaluate_retrieval(
        q,
        db,
        data.query_labels,
        data.database_labels,
        hamming_radius=None,
        scores=code.eval_scorer(q, db),
    )
    return float(m["map"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", default=",".join(HASHING + UNSUPERVISED))
    ap.add_argument("--bits", default="16,32,48,64")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument(
        "--size", type=int, default=None, help="backbone input size (default: the protocol's, 224)"
    )
    ap.add_argument("--protocol", default="fashion-mnist")
    ap.add_argument(
        "--holdout", type=int, default=0, help="validation: N training images query the rest"
    )
    ap.add_argument("--set", action="append", default=[], metavar="[METHOD:]KEY=VALUE")
    ap.add_argument(
        "--backbone",
        default=None,
        metavar="RUN_DIR",
        help="features of this run's fine-tuned backbone",
    )
    ap.add_argument("--finetune", action="store_true", help="fine-tune the backbone in every run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--no-baseline", action="store_true", help="skip the frozen float baseline's evaluation"
    )
    ap.add_argument("--out", default=None, help="keep the runs here (default: a temp dir)")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="cbir-hashing-"))
    common, per = parse_sets(args.set)
    settings = dict(
        dataset="fashion-mnist",
        protocol=args.protocol,
        epochs=args.epochs,
        eval_every=0,
        size=args.size,
        holdout=args.holdout,
        seed=args.seed,
        tsne_points=0,
        finetune=args.finetune,
    )
    settings.update(common)
    base = make_config(settings)
    t = time.perf_counter()
    data = (
        backbone_data(base, args.backbone, False)
        if args.backbone
        else load_data(base, progress=False)
    )
    what = "validation (held-out training images)" if args.holdout else "test queries"
    print(
        f"protocol {args.protocol}, {what}: train {len(data.x)}, queries {len(data.query)}, "
        f"database {len(data.database)}; backbone weights {data.fingerprint['weights']} at "
        f"{data.fingerprint['preprocess']['size']} px; features in {time.perf_counter() - t:.1f} s; "
        f"threads {os.environ.get('OMP_NUM_THREADS', 'default')}",
        flush=True,
    )
    from cbir.heads.transform import FrozenTransform

    fro = {"map": float("nan")}
    if not args.no_baseline:
        fro = evaluate_transform(FrozenTransform(center=True), data)
        print(f"frozen float baseline (centred cosine): mAP {fro['map']:.4f}", flush=True)
    print(f"{'method':<14}{'bits':>5}{'mAP':>9}{'P@H<=2':>9}{'train s':>9}{'eval s':>8}  settings")
    results = []
    for method in args.methods.split(","):
        for bits in [int(b) for b in args.bits.split(",")]:
            over = per.get(method, {})
            cfg = make_config(settings, method=method, bits=bits, **over)
            run = out / f"{method}-{bits}"
            r = train(cfg, run, progress=False, data=data)
            m = r["metrics"]
            if cfg.kind().startswith("subic"):  # SUBIC: the symmetric search's mAP too
                m["map_sdc"] = symmetric_map(run, data)
            r["settings"] = {**common, **over}
            results.append(r)
            shown = " ".join(f"{k}={json.dumps(v)}" for k, v in r["settings"].items())
            if "map_sdc" in m:
                shown = f"symmetric (SDC) mAP {m['map_sdc']:.4f} {shown}"
            print(
                f"{method:<14}{bits:>5}{m['map']:>9.4f}{m.get('p@h2', float('nan')):>9.4f}"
                f"{r['train_seconds']:>9.1f}{r['eval_seconds']:>8.1f}  {shown}",
                flush=True,
            )
            (out / "summary.json").write_text(
                json.dumps({"frozen_map": fro["map"], "runs": results}, indent=2, default=float)
            )
    print(f"runs in {out}")


if __name__ == "__main__":
    main()

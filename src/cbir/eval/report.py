"""Evaluation reports a person can read and look at.

``write_report(out_dir, summary, context)`` writes::

    report.json   the figures (what ``cbir evaluate --json`` prints)
    report.md     a Markdown summary table
    pr.png        precision-recall curve (by Hamming radius for codes, by score for floats)
    p_at_k.png    precision@k against k
    topk.png      the top-10 results of a few queries (green: relevant, red: not)
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from cbir.codes.registry import code_kind
from cbir.errors import CbirError
from cbir.utils import atomic_write_bytes, atomic_write_json


def require_plots() -> None:
    """Raise a :class:`CbirError` naming the extra when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CbirError(
            "cbir evaluate --out draws its plots with matplotlib: pip install 'cbir[plots]'"
        ) from None


def _plt():
    require_plots()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    _plt().close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


_LABELS = (  # (key pattern, label): the names a reader can tell apart (issue 18)
    (
        re.compile(r"^recall@(\d+)$"),
        "rank-{0} recall: queries with a relevant item in the top {0} ({1})",
    ),
    (
        re.compile(r"^r@(\d+)$"),
        "R@{0} of the PR curve: a query's relevant items in the top {0} ({1})",
    ),
    (re.compile(r"^p@(\d+)$"), "precision in the top {0} ({1})"),
    (re.compile(r"^p@h(\d+)$"), "precision within Hamming radius {0} ({1})"),
    (re.compile(r"^r@h(\d+)$"), "recall within Hamming radius {0} ({1})"),
)


def metric_label(key: str) -> str:
    """A figure's name in tables: ``recall@K`` (metric learning's Recall@K, a hit in the
    top K) and ``r@K`` (recall at K on the precision-recall curve) are told apart; the key
    stays in brackets. Other keys are returned as they are."""
    for pattern, label in _LABELS:
        m = pattern.match(key)
        if m:
            return label.format(m.group(1), key)
    return key


def markdown(summary: dict[str, Any], topk: bool = True) -> str:
    m = summary["metrics"]
    lines = [
        f"# {summary['protocol']}: {summary['model']}",
        "",
        summary.get("description", ""),
        "",
    ]
    if summary.get("warning"):
        lines += [f"> **Warning:** {summary['warning']}", ""]
    if summary.get("split"):
        lines += [f"- split: {summary['split']['line']}"]
    lines += [
        f"- queries: {summary['n_queries']} (excluded, no relevant item: {summary.get('n_queries_no_relevant', 0)})",
        f"- database: {summary['n_database']}",
        f"- backbone input: {summary.get('size')} px; time: {summary['seconds']['total']} s",
        f"- ties: {summary.get('ties', 'mAP is tie-aware (McSherry & Najork 2008)')}",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [
        f"| {metric_label(k)} | {_fmt(v)} |"
        for k, v in m.items()
        if not isinstance(v, (dict, list, str))
    ]
    lines += [
        "",
        "![precision-recall](pr.png) ![precision@k](p_at_k.png)",
        "",
    ]
    lines += ["![top 10](topk.png)", ""] if topk else []
    return "\n".join(lines)


def plot_pr(curves: dict[str, Any], path: Path, title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4), dpi=110)
    pr = curves.get("pr") or {}
    if pr:
        ax.plot(pr["recall"], pr["precision"], marker=".")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_pk(curves: dict[str, Any], path: Path, title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4), dpi=110)
    pk = curves.get("p_at_k") or {}
    if pk:
        ax.plot(pk["k"], pk["precision"], marker=".")
        ax.set_xscale("log")
    ax.set_xlabel("k")
    ax.set_ylabel("precision@k")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def top_k(
    transform: Any, qf: np.ndarray, dbf: np.ndarray, k: int, exclude: np.ndarray | None
) -> np.ndarray:
    """Indices of the top-``k`` database items for each query row (exact)."""
    q, db = transform(qf), transform(dbf)
    # binary codes: 1 - hamming / bits, which orders as -hamming does
    score = code_kind(transform).scores(q, db, transform.dim)
    if exclude is not None:
        score[np.arange(q.shape[0]), exclude] = -np.inf
    order = np.argsort(-score, axis=1, kind="stable")
    return order[:, :k]


def plot_topk(
    context: dict[str, Any], path: Path, n_queries: int = 6, k: int = 10, seed: int = 0
) -> None:
    splits, query = context["splits"], context["query_set"]
    database = splits.database if splits.database is not None else query
    qf = np.asarray(context["query_features"])
    dbf = np.asarray(context["database_features"] if splits.database is not None else qf)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(query), min(n_queries, len(query)), replace=False))
    exclude = pick if splits.database is None else None
    tops = top_k(context["transform"], qf[pick], dbf, k, exclude)
    plt = _plt()
    fig, axes = plt.subplots(len(pick), k + 1, figsize=(1.2 * (k + 1), 1.3 * len(pick)), dpi=100)
    axes = np.atleast_2d(axes)
    ql, dbl = np.asarray(query.labels), np.asarray(database.labels)
    for r, qi in enumerate(pick):
        ax = axes[r, 0]
        ax.imshow(query.load(int(qi)))
        ax.set_title("query", fontsize=7)
        for c, di in enumerate(tops[r]):
            ax = axes[r, c + 1]
            ax.imshow(database.load(int(di)))
            if ql.ndim == 1:
                rel = ql[qi] == dbl[di]
            else:
                rel = bool((ql[qi] & dbl[di]).any())
            for s in ax.spines.values():
                s.set_edgecolor("green" if rel else "red")
                s.set_linewidth(3)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    _save(fig, path)


def write_report(out_dir: str | Path, summary: dict[str, Any], context: dict[str, Any]) -> Path:
    """Write the report files into ``out_dir`` (created); returns the directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "report.json", summary)
    topk = "splits" in context  # an index evaluation has no image sets to draw
    atomic_write_bytes(out / "report.md", markdown(summary, topk).encode())
    title = f"{summary['protocol']}: {summary['model']}"
    plot_pr(context.get("curves", {}), out / "pr.png", title)
    plot_pk(context.get("curves", {}), out / "p_at_k.png", title)
    if topk:
        plot_topk(context, out / "topk.png")
    return out


def dumps(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2, default=float)

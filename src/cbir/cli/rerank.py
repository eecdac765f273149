"""``--rerank MODE`` and its parameters, shared by ``cbir search`` and ``cbir evaluate``."""

from __future__ import annotations

import argparse

from cbir.search.rerank import MODES, Rerank, make_rerank


def add_rerank_arguments(sp_: argparse.ArgumentParser) -> None:
    """Add the ``re-ranking`` option group (:mod:`cbir.search.rerank`) to ``sp_``."""
    g = sp_.add_argument_group("re-ranking")
    g.add_argument(
        "--rerank",
        default=None,
        choices=sorted(MODES),
        help="qe: average query expansion; alpha-qe (aqe): alpha-weighted QE; kreciprocal: k-reciprocal re-ranking",
    )
    g.add_argument(
        "--rerank-n",
        type=int,
        default=None,
        metavar="N",
        help="QE: vectors averaged, the query counted first (default 10; 1 = plain search)",
    )
    g.add_argument(
        "--rerank-alpha",
        type=float,
        default=None,
        metavar="A",
        help="alpha-QE: similarity exponent (default 3; 0 = average QE)",
    )
    g.add_argument(
        "--rerank-k1", type=int, default=None, metavar="K", help="k-reciprocal: k1 (default 20)"
    )
    g.add_argument(
        "--rerank-k2",
        type=int,
        default=None,
        metavar="K",
        help="k-reciprocal: k2, local query expansion (default 6)",
    )
    g.add_argument(
        "--rerank-lambda",
        type=float,
        default=None,
        metavar="L",
        help="k-reciprocal: weight of the original distance (default 0.3)",
    )
    g.add_argument(
        "--rerank-shortlist",
        type=int,
        default=None,
        metavar="N",
        help="k-reciprocal: results re-ranked per query (default 100)",
    )


def rerank_from_args(args: argparse.Namespace) -> Rerank | None:
    """The :class:`Rerank` the options of :func:`add_rerank_arguments` ask for."""
    return make_rerank(
        args.rerank,
        n=args.rerank_n,
        alpha=args.rerank_alpha,
        k1=args.rerank_k1,
        k2=args.rerank_k2,
        lam=args.rerank_lambda,
        shortlist=args.rerank_shortlist,
    )

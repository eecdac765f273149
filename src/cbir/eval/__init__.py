"""Evaluation: retrieval metrics (``cbir.eval.metrics``), protocols and reports."""

from cbir.eval.metrics import TIES, evaluate_retrieval, hamming_distances, nmi, relevance

__all__ = ["TIES", "evaluate_retrieval", "hamming_distances", "nmi", "relevance"]

"""The one onnxruntime session setup every ONNX model in cbir runs under."""

from __future__ import annotations

import os


def cpu_session(path: str | os.PathLike[str], threads: int | None = None):
    """An onnxruntime CPU session: ``threads`` intra-op threads (default: every core)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or os.cpu_count() or 1
    opts.inter_op_num_threads = 1
    # Idle intra-op threads must not spin: image decoding shares the cores.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

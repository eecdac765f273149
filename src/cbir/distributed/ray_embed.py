"""Embedding on Ray Data: the file list as a Ray dataset, decode + embed in an actor pool.

Each actor holds one onnxruntime session (EfficientNet-Lite0, the same ONNX export and
preprocessing as the single-process path) and turns a batch of paths into rows of
``(sha256, bytes, width, height, features, logits)`` or an error reason. The driver puts
the rows back in file order and hands them to :func:`cbir.pipeline.index_folder` as the
same :class:`~cbir.backbones.embed.Batch` objects the local path yields, so ids, commits,
incremental runs (touch / reuse) and failures are decided exactly as they are there.

With no address a local Ray is started (``num_cpus`` = this machine's cores); with one
(``ray://host:10001`` or ``host:6379``) the job joins that cluster, whose nodes need cbir
installed and the image paths readable (a shared file system). An actor refuses to run
a model whose fingerprint differs from the index's.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cbir.backbones.embed import Batch
from cbir.errors import CbirError, ImageError

Item = tuple[str, os.stat_result]


class EmbedActor:
    """One onnxruntime session; ``__call__`` embeds a Ray Data batch of paths.

    Args:
        fingerprint: what the index was built with; a different local model is refused.
        threads: onnxruntime intra-op threads (one per CPU the actor holds).
        spec, options: how the index names and opens its backbone (``backbone_spec`` and
            ``backbone_options`` of its config; default: efficientnet-lite0).
    """

    def __init__(
        self,
        fingerprint: dict[str, Any],
        threads: int = 1,
        spec: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        from cbir.backbones.registry import backbone_for

        config = {"backbone": fingerprint, "backbone_spec": spec, "backbone_options": options or {}}
        try:
            self.backbone = backbone_for(config, threads=threads)
        except CbirError:
            self.backbone = None
        if self.backbone is None or self.backbone.fingerprint != fingerprint:
            raise CbirError(
                f"this Ray worker has model {getattr(self.backbone, 'fingerprint', spec)}, the index"
                f" {fingerprint}; install the same cbir on every node"
            )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return embed_paths(self.backbone, batch["i"], batch["path"])


def embed_paths(backbone: Any, index: Sequence[int], paths: Sequence[str]) -> dict[str, np.ndarray]:
    """Read, hash, decode and embed ``paths``: one output row per path, failures included."""
    from cbir.data.images import decode, read_bytes

    n = len(paths)
    sha = np.full(n, "", dtype=object)
    nbytes = np.zeros(n, np.int64)
    wh = np.full((n, 2), -1, np.int64)
    reason = np.full(n, "", dtype=object)
    detail = np.full(n, "", dtype=object)
    arrays: list[np.ndarray] = []
    rows: list[int] = []
    for j, path in enumerate(paths):
        try:
            data = read_bytes(str(path))
            sha[j], nbytes[j] = hashlib.sha256(data).hexdigest(), len(data)
            img = decode(data, str(path), draft_size=backbone.preprocess.size)
            wh[j] = img.info.get("orig_size", img.size)
            arrays.append(backbone.preprocess(img))
            rows.append(j)
        except ImageError as e:
            reason[j], detail[j] = e.reason, e.detail
    dim = backbone.dim
    feats = np.zeros((n, dim), np.float32)
    logits = np.zeros((n, getattr(backbone, "n_classes", 0)), np.float32)
    if arrays:
        f, lg = backbone.run(np.stack(arrays))
        feats[rows], logits[rows] = f, lg
    return {
        "i": np.asarray(index, np.int64),
        "sha": sha,
        "nbytes": nbytes,
        "wh": wh,
        "reason": reason,
        "detail": detail,
        "features": feats,
        "logits": logits,
    }


def connect(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Start a local Ray (no address) or join a cluster; False when Ray was already up."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.WARNING,
    }
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = address or "a local Ray"
        raise CbirError(f"cannot start or join Ray at {where} ({str(e).splitlines()[0]})") from None
    return True


@dataclass
class RayEngine:
    """The ``engine`` of :func:`cbir.pipeline.index_folder` that embeds on Ray.

    Args:
        address: a Ray cluster to join; None starts a local Ray.
        workers: actors in the pool (one onnxruntime session each); default: the
            cluster's CPUs divided by ``threads``.
        threads: CPUs (and onnxruntime threads) per actor.
        batch_size: images per actor call; default: the pipeline's batch size.
    """

    address: str | None = None
    workers: int | None = None
    threads: int = 1
    batch_size: int | None = None
    _started: bool = field(default=False, repr=False)

    def _pool_size(self) -> int:
        import ray

        if self.workers:
            return self.workers
        cpus = int(ray.cluster_resources().get("CPU", 1))
        return max(1, cpus // max(1, self.threads))

    def embed(
        self,
        items: Sequence[Item],
        classify: Callable[[Item, str, int], dict[str, Any]],
        backbone: Any,
        batch_size: int = 64,
    ) -> Iterator[Batch[Item]]:
        """Embed ``items`` on Ray; yields Batches in the order of ``items``.

        ``classify(item, sha, nbytes) -> info`` decides on the driver whether the file
        is new, touched or a copy of indexed content (as the local path does). Copies
        are still embedded by the actors (their features are then not used).
        """
        if not items:
            return
        for rows in self.rows(items, backbone, batch_size):
            yield _to_batch(items, rows, classify)

    def rows(
        self, items: Sequence[Item], backbone: Any, batch_size: int = 64
    ) -> Iterator[dict[str, np.ndarray]]:
        """Actor output for ``items``, re-chunked to ``batch_size`` rows, in order."""
        import ray.data

        self._started = connect(self.address) or self._started
        workers = self._pool_size()
        per_call = self.batch_size or max(1, min(batch_size, -(-len(items) // workers)))
        ctx = ray.data.DataContext.get_current()
        before = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        try:
            ds = ray.data.from_items(
                [{"i": i, "path": p} for i, (p, _st) in enumerate(items)],
                override_num_blocks=max(1, min(len(items), -(-len(items) // per_call))),
            )
            ds = ds.map_batches(
                EmbedActor,
                fn_constructor_kwargs={
                    "fingerprint": backbone.fingerprint,
                    "threads": self.threads,
                    "spec": getattr(backbone, "spec", None),
                    "options": getattr(backbone, "options", None),
                },
                batch_size=per_call,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=workers),
                num_cpus=self.threads,
            )
            yield from _in_order(ds.iter_batches(batch_size=None, batch_format="numpy"), batch_size)
        except Exception as e:  # Ray wraps worker errors in its own types
            if isinstance(e, CbirError):
                raise
            cause = e
            while getattr(cause, "cause", None) is not None:
                cause = cause.cause  # type: ignore[assignment]
            if isinstance(cause, CbirError):
                raise CbirError(str(cause)) from None
            raise CbirError(
                f"Ray embedding failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
            ) from e
        finally:
            ctx.execution_options.preserve_order, ctx.enable_progress_bars = before

    def close(self) -> None:
        """Shut Ray down if this engine started (or joined) it."""
        if self._started:
            import ray

            ray.shutdown()
            self._started = False

    def __enter__(self) -> RayEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_COLUMNS = ("i", "sha", "nbytes", "wh", "reason", "detail", "features", "logits")


def _in_order(
    blocks: Iterator[dict[str, np.ndarray]], batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
    """Re-chunk actor outputs into ``batch_size`` rows by ascending ``i`` (0, 1, 2, ...)."""
    pending: dict[int, dict[str, np.ndarray]] = {}
    parts: list[dict[str, np.ndarray]] = []
    have, nxt = 0, 0

    def cut(n: int) -> dict[str, np.ndarray]:
        nonlocal parts, have
        merged = {c: np.concatenate([p[c] for p in parts]) for c in _COLUMNS}
        out = {c: v[:n] for c, v in merged.items()}
        rest = {c: v[n:] for c, v in merged.items()}
        parts = [rest] if len(rest["i"]) else []
        have = len(rest["i"])
        return out

    for block in blocks:
        if not len(block["i"]):
            continue
        pending[int(block["i"][0])] = block
        while nxt in pending:
            b = pending.pop(nxt)
            if not np.array_equal(b["i"], np.arange(nxt, nxt + len(b["i"]))):
                raise CbirError("Ray returned rows out of order; this is a bug in cbir")
            nxt += len(b["i"])
            parts.append(b)
            have += len(b["i"])
            while have >= batch_size:
                yield cut(batch_size)
    if pending:
        raise CbirError("Ray lost rows of the file list; this is a bug in cbir")
    if have:
        yield cut(have)


def _to_batch(
    items: Sequence[Item],
    rows: dict[str, np.ndarray],
    classify: Callable[[Item, str, int], dict[str, Any]],
) -> Batch[Item]:
    """The pipeline's Batch for one chunk of actor rows (decisions made by ``classify``)."""
    ok: list[tuple[Item, Any, int]] = []
    failed: list[tuple[Item, ImageError]] = []
    keep: list[int] = []
    for j, i in enumerate(rows["i"]):
        item = items[int(i)]
        if rows["reason"][j] and not rows["sha"][j]:  # unreadable: nothing was hashed
            failed.append(
                (item, ImageError(item[0], str(rows["reason"][j]), str(rows["detail"][j])))
            )
            continue
        info = classify(item, str(rows["sha"][j]), int(rows["nbytes"][j]))
        if "touch" in info or "reuse" in info:
            ok.append((item, info, -1))
        elif rows["reason"][j]:
            failed.append(
                (item, ImageError(item[0], str(rows["reason"][j]), str(rows["detail"][j])))
            )
        else:
            info["width"], info["height"] = (int(v) for v in rows["wh"][j])
            ok.append((item, info, len(keep)))
            keep.append(j)
    return Batch(ok, failed, rows["features"][keep], rows["logits"][keep])

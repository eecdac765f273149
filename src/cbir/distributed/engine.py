"""Where :func:`cbir.pipeline.index_folder` decodes and embeds: this process or Ray.

Ray is imported only when asked for (the ``ray`` extra).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from cbir.errors import CbirError

#: The engines :func:`engine_for` knows.
ENGINES = ("local", "ray")


@contextlib.contextmanager
def engine_for(
    engine: str = "local", *, ray_address: str | None = None, ray_workers: int | None = None
) -> Iterator[Any]:
    """The ``engine`` for :func:`cbir.pipeline.index_folder` (None: this process).

    Args:
        engine: "local" (this process) or "ray" (an actor pool on Ray Data).
        ray_address: join this Ray cluster (None: start a local Ray); needs "ray".
        ray_workers: Ray actors, one onnxruntime session each (None: one per CPU).
    """
    if engine != "ray":
        if ray_address:
            raise CbirError("--ray-address needs --engine ray")
        yield None
        return
    try:
        from cbir.distributed.ray_embed import RayEngine
    except ImportError as e:
        raise CbirError(
            f"--engine ray needs the ray extra: pip install 'cbir[ray]' ({e})"
        ) from None
    ray = RayEngine(address=ray_address, workers=ray_workers)
    try:
        yield ray
    finally:
        ray.close()

"""The service under a long bounded loopback load: memory stays flat, nothing fails.

``cbir serve`` runs in its own process; wrk (or httpx when wrk is missing) keeps 8
requests in flight for ``seconds``: nine searches by id for each upload search. The
server's resident memory is sampled every second. A failure: any error (a status other
than 200, a transport error), or memory that keeps growing after the warm-up (more than
:data:`MAX_GROWTH_BYTES` between the end of the warm-up and the end of the run).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from cbir_testing.reliability.report import Outcome, Tally

#: Allowed RSS growth from the end of the warm-up to the end of the run.
MAX_GROWTH_BYTES = 32 * 1024 * 1024
#: Uploads per ``1 + UPLOAD_EVERY`` requests.
UPLOAD_EVERY = 9


@dataclass
class SoakResult:
    """One soak: the load's totals and the server's memory over time."""

    seconds: float
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    client: str
    rss: list[tuple[float, int]] = field(default_factory=list)
    warmup_s: float = 0.0
    error_samples: list[str] = field(default_factory=list)

    def rss_at(self, t: float) -> int:
        """The first RSS sample at or after ``t`` seconds (the last one if none)."""
        return next((r for s, r in self.rss if s >= t), self.rss[-1][1])

    @property
    def growth_bytes(self) -> int:
        return self.rss[-1][1] - self.rss_at(self.warmup_s)

    @property
    def ok(self) -> bool:
        return self.errors == 0 and self.requests > 0 and self.growth_bytes <= MAX_GROWTH_BYTES


def soak_requests(index_dir: str | os.PathLike[str], n: int = 2000, seed: int = 0) -> list:
    """Searches by random ids, and uploads of mirrored indexed images (new content)."""
    from cbir.index.store import IndexStore
    from cbir_testing.loadgen import id_request, upload_request

    store = IndexStore.open(index_dir)
    try:
        ids = [r[0] for r in store.conn.execute("SELECT id FROM images")]
        rng = np.random.default_rng(seed)
        picked = rng.choice(ids, min(len(ids), 100), replace=False)
        bodies = []
        for r in store.rows([int(i) for i in picked]):
            try:
                with Image.open(r["path"]) as im:
                    img = ImageOps.mirror(im.convert("RGB"))
            except OSError:
                continue
            img.thumbnail((256, 256))
            buf = io.BytesIO()
            img.save(buf, "PNG")
            bodies.append(upload_request(buf.getvalue(), "mirror.png"))
    finally:
        store.close()
    out = []
    for i, id_ in enumerate(rng.choice(ids, n)):
        if bodies and i % (UPLOAD_EVERY + 1) == UPLOAD_EVERY:
            out.append(bodies[i % len(bodies)])
        else:
            out.append(id_request(int(id_)))
    return out


def run_soak(
    index_dir: str | os.PathLike[str],
    seconds: float = 600.0,
    concurrency: int = 8,
    warmup_s: float | None = None,
    serve_args: tuple[str, ...] = (),
    workers: int = 1,
) -> SoakResult:
    """``cbir serve index_dir`` under ``concurrency`` requests in flight for ``seconds``."""
    from cbir_testing.loadgen import RssSampler, ServerProcess, run_load, run_wrk, wrk_available

    reqs = soak_requests(index_dir)
    warm = min(60.0, seconds / 5) if warmup_s is None else warmup_s
    with ServerProcess(index_dir, *serve_args, workers=workers) as srv:
        with RssSampler(srv.pid, 1.0) as rss:
            if wrk_available():
                res = run_wrk(srv.url, reqs, 10**9, concurrency, max_seconds=seconds)
            else:
                res = run_load(srv.url, reqs, 10**9, concurrency, max_seconds=seconds)
        return SoakResult(
            seconds=res.seconds,
            requests=res.requests,
            errors=res.errors,
            p50_ms=res.p50_ms,
            p99_ms=res.p99_ms,
            client=res.client,
            rss=rss.samples,
            warmup_s=warm,
            error_samples=res.error_samples,
        )


def soak_tally(index_dir: Path, seconds: float, log=print) -> Tally:
    """The soak as a row of the reliability table (one trial; its figures in the notes)."""
    r = run_soak(index_dir, seconds)
    t = Tally(
        f"service under loopback load, 8 in flight, {seconds / 60:.0f} min", measures_loss=False
    )
    o = Outcome()
    if not r.ok:
        o.fail(
            f"{r.errors} errors, RSS grew {r.growth_bytes / 2**20:.1f} MiB after warm-up"
            + (f" ({r.error_samples[0]})" if r.error_samples else "")
        )
    t.add(o)
    t.notes["requests"] = r.requests
    t.notes["errors"] = r.errors
    t.notes["RSS MiB after warm-up"] = round(r.rss_at(r.warmup_s) / 2**20)
    t.notes["RSS MiB at the end"] = round(r.rss[-1][1] / 2**20)
    log(
        f"{t.fault}: {r.requests} requests ({r.client}), {r.errors} errors, p50 {r.p50_ms:.1f} ms,"
        f" RSS {r.rss_at(r.warmup_s) / 2**20:.0f} -> {r.rss[-1][1] / 2**20:.0f} MiB"
    )
    return t

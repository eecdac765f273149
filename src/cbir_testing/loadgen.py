"""A bounded loopback load against ``cbir serve`` running in its own process.

:class:`ServerProcess` starts ``cbir serve INDEX_DIR --port 0`` (uvicorn) and reads the
server's resident memory from ``/proc``; :func:`run_load` sends a fixed number of requests
with ``concurrency`` in flight (httpx on asyncio, keep-alive connections) and records each
one's latency and status; :class:`RssSampler` samples the server's memory meanwhile.
Only loopback addresses are accepted, and every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from cbir.errors import CbirError


@dataclass
class Request:
    """One prepared request: method, path with query, body and headers."""

    method: str
    path: str
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: What the answer is checked against (see ``check`` in :func:`run_load`).
    expect: Any = None


def upload_request(
    data: bytes, name: str = "query.png", k: int = 10, expect: Any = None
) -> Request:
    """POST /search with ``data`` as a multipart upload, encoded once by httpx."""
    import httpx

    req = httpx.Request(
        "POST",
        "http://127.0.0.1/search",
        files={"file": (name, data, "application/octet-stream")},
        data={"k": str(k)},
    )
    body = req.read()
    return Request("POST", "/search", body, {"content-type": req.headers["content-type"]}, expect)


def id_request(id_: int, k: int = 10) -> Request:
    """GET /search?id=N&k=K, expecting N (or an exact duplicate of it) at rank 1."""
    return Request("GET", f"/search?id={int(id_)}&k={int(k)}", expect=int(id_))


@dataclass
class LoadResult:
    """Latencies and outcomes of one bounded load."""

    name: str
    client: str
    requests: int
    concurrency: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float
    #: 200 answers that passed ``check`` (None: not checked).
    checked_ok: int | None = None
    error_samples: list[str] = field(default_factory=list)
    #: CPU seconds the load generator and the server spent during the load.
    client_cpu_s: float = 0.0
    server_cpu_s: float | None = None

    @property
    def qps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        per = max(self.requests, 1)
        return {
            "name": self.name,
            "client": self.client,
            "requests": self.requests,
            "concurrency": self.concurrency,
            "seconds": round(self.seconds, 2),
            "errors": self.errors,
            "checked_ok": self.checked_ok,
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "qps": round(self.qps, 1),
            "client_cpu_ms_per_request": round(1e3 * self.client_cpu_s / per, 3),
            "server_cpu_ms_per_request": None
            if self.server_cpu_s is None
            else round(1e3 * self.server_cpu_s / per, 3),
            "error_samples": self.error_samples[:5],
        }


def _check_loopback(url: str) -> str:
    host = urlsplit(url).hostname or ""
    try:
        ok = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise CbirError(f"{url}: the load generator only targets loopback addresses")
    return url.rstrip("/")


async def _load(
    url: str,
    requests: Sequence[Request],
    n: int,
    concurrency: int,
    check: Callable[[Request, Any], bool] | None,
    timeout_s: float,
    max_seconds: float,
    stop: threading.Event | None,
) -> LoadResult:
    import httpx

    lat = np.zeros(n, np.float64)
    done = np.zeros(n, bool)
    errors: list[str] = []
    n_err = 0
    n_ok = 0
    counter = itertools.count()
    deadline = time.monotonic() + max_seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=url, limits=limits, timeout=timeout_s, http1=True
    ) as client:

        async def worker() -> None:
            nonlocal n_err, n_ok
            while True:
                i = next(counter)
                if i >= n or time.monotonic() > deadline or (stop is not None and stop.is_set()):
                    return
                req = requests[i % len(requests)]
                t0 = time.perf_counter()
                try:
                    r = await client.request(
                        req.method, req.path, content=req.content, headers=req.headers
                    )
                    status, body = r.status_code, r.content
                except httpx.HTTPError as e:
                    status, body = -1, f"{type(e).__name__}: {e}".encode()
                lat[i] = (time.perf_counter() - t0) * 1e3
                done[i] = True
                if status != 200:
                    n_err += 1
                    if len(errors) < 20:
                        errors.append(f"{req.method} {req.path}: {status} {body[:200]!r}")
                elif check is not None:
                    try:
                        n_ok += bool(check(req, r.json()))
                    except ValueError:
                        pass

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - t0
    got = lat[done]
    return LoadResult(
        name="",
        client="httpx",
        requests=int(done.sum()),
        concurrency=concurrency,
        seconds=seconds,
        errors=n_err,
        p50_ms=float(np.percentile(got, 50)) if len(got) else 0.0,
        p99_ms=float(np.percentile(got, 99)) if len(got) else 0.0,
        checked_ok=n_ok if check is not None else None,
        error_samples=errors,
    )


def run_load(
    url: str,
    requests: Sequence[Request],
    n: int = 10_000,
    concurrency: int = 8,
    *,
    name: str = "",
    check: Callable[[Request, Any], bool] | None = None,
    timeout_s: float = 30.0,
    max_seconds: float = 1800.0,
    stop: threading.Event | None = None,
    server_pid: int | None = None,
) -> LoadResult:
    """Send ``n`` requests (cycling through ``requests``), ``concurrency`` at a time.

    A request fails (counted in ``errors``) on any status but 200 or a transport error;
    ``check(request, json)`` judges each 200 answer. Stops early after ``max_seconds`` or
    when ``stop`` is set. With ``server_pid``, the server's CPU time is recorded too.
    """
    if not requests:
        raise ValueError("run_load: no requests")
    c0 = time.process_time()
    s0 = cpu_seconds(server_pid) if server_pid else 0.0
    res = asyncio.run(
        _load(_check_loopback(url), requests, n, concurrency, check, timeout_s, max_seconds, stop)
    )
    res.client_cpu_s = time.process_time() - c0
    if server_pid:
        res.server_cpu_s = cpu_seconds(server_pid) - s0
    res.name = name
    return res


#: The wrk script: replays prepared raw requests, stops each thread after its quota of
#: responses (leaving a marker file), and prints the totals as JSON when wrk ends.
WRK_LUA = """
local threads = {}
function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end
function init(args)
  local f = assert(io.open(args[1], "rb"))
  local data = f:read("*a")
  f:close()
  reqs = {}
  local pos = 1
  while pos <= #data do
    local nl = data:find("\\n", pos, true)
    local len = tonumber(data:sub(pos, nl - 1))
    reqs[#reqs + 1] = data:sub(nl + 1, nl + len)
    pos = nl + len + 1
  end
  quota = tonumber(args[2])
  marker = args[3] .. "/done-" .. tid
  nthreads = tonumber(args[4])
  i = tid
  responses, bad, sent = 0, 0, 0
  first_bad = ""
end
function request()
  local r = reqs[(i % #reqs) + 1]
  i = i + nthreads
  sent = sent + 1
  return r
end
function response(status, headers, body)
  responses = responses + 1
  if status ~= 200 then
    bad = bad + 1
    if first_bad == "" then first_bad = status .. " " .. string.sub(body or "", 1, 200) end
  end
  if responses == quota then
    io.open(marker, "w"):close()
    wrk.thread:stop()
  end
end
function done(summary, latency, requests)
  local ok, nbad, first = 0, 0, ""
  for _, t in ipairs(threads) do
    ok = ok + t:get("responses")
    nbad = nbad + t:get("bad")
    if first == "" then first = t:get("first_bad") end
  end
  local e = summary.errors
  io.write(string.format(
    '{"responses":%d,"bad_status":%d,"connect":%d,"read":%d,"write":%d,"timeout":%d,' ..
    '"p50_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d,"first_bad":"%s"}\\n',
    ok, nbad, e.connect, e.read, e.write, e.timeout, latency:percentile(50),
    latency:percentile(99), latency.mean, latency.max,
    string.gsub(first, '[%c"\\\\]', "?")))
end
"""


def raw_request(req: Request, host: str) -> bytes:
    """``req`` as the bytes of an HTTP/1.1 keep-alive request to ``host``."""
    head = [f"{req.method} {req.path} HTTP/1.1", f"Host: {host}"]
    head += [f"{k}: {v}" for k, v in req.headers.items()]
    if req.content is not None:
        head.append(f"Content-Length: {len(req.content)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (req.content or b"")


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(
    url: str,
    requests: Sequence[Request],
    n: int = 10_000,
    concurrency: int = 8,
    *,
    name: str = "",
    threads: int = 1,
    timeout_s: float = 30.0,
    max_seconds: float = 1800.0,
    server_pid: int | None = None,
) -> LoadResult:
    """Send ``n`` requests with wrk (Debian's ``wrk``): ``concurrency`` keep-alive connections.

    Latency percentiles are wrk's own; an error is a non-200 status or a connect, read,
    write or timeout error.
    """
    wrk = shutil.which("wrk")
    if wrk is None:
        raise CbirError("wrk is not installed: apt-get install wrk (or use the httpx client)")
    if not requests:
        raise ValueError("run_wrk: no requests")
    url = _check_loopback(url)
    host = urlsplit(url).netloc
    threads = max(1, min(threads, concurrency))
    quota = max(1, n // threads)
    with tempfile.TemporaryDirectory(prefix="cbir-wrk-") as tmp:
        reqs = Path(tmp) / "requests.bin"
        with open(reqs, "wb") as f:
            for r in requests:
                raw = raw_request(r, host)
                f.write(b"%d\n" % len(raw) + raw)
        script = Path(tmp) / "replay.lua"
        script.write_text(WRK_LUA)
        cmd = [
            wrk,
            "-t",
            str(threads),
            "-c",
            str(concurrency),
            "-d",
            f"{int(max_seconds)}s",
            "--timeout",
            f"{int(timeout_s)}s",
            "-s",
            str(script),
            url,
            "--",
            str(reqs),
            str(quota),
            tmp,
            str(threads),
        ]
        c0 = os.times()
        s0 = cpu_seconds(server_pid) if server_pid else 0.0
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while proc.poll() is None:
            if len(list(Path(tmp).glob("done-*"))) >= threads:
                break
            time.sleep(0.005)
        seconds = time.perf_counter() - t0
        if server_pid:
            server_cpu = cpu_seconds(server_pid) - s0
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        c1 = os.times()
    line = next((x for x in out.splitlines() if x.startswith("{")), None)
    if line is None:
        raise CbirError(f"wrk gave no result: {err.strip()[-300:] or out.strip()[-300:]}")
    import json

    w = json.loads(line)
    transport = w["connect"] + w["read"] + w["write"] + w["timeout"]
    samples = [w["first_bad"]] if w["first_bad"] else []
    if transport:
        samples.append(
            f"connect {w['connect']}, read {w['read']}, write {w['write']}, timeout {w['timeout']}"
        )
    return LoadResult(
        name=name,
        client="wrk",
        requests=int(w["responses"]),
        concurrency=concurrency,
        seconds=seconds,
        errors=int(w["bad_status"]) + transport,
        p50_ms=w["p50_us"] / 1e3,
        p99_ms=w["p99_us"] / 1e3,
        error_samples=samples,
        client_cpu_s=(c1.children_user + c1.children_system)
        - (c0.children_user + c0.children_system),
        server_cpu_s=server_cpu if server_pid else None,
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of process ``pid`` and its live children (``/proc``)."""
    total = 0
    for p in [pid, *_children(pid)]:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` and its children (from ``/proc``)."""
    total = 0
    for p in [pid, *_children(pid)]:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
    return total


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for t in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                kids = Path(f"/proc/{pid}/task/{t}/children").read_text().split()
                for k in kids:
                    out += [int(k), *_children(int(k))]
    return out


class RssSampler:
    """Samples a process's resident memory every ``interval_s`` in a thread."""

    def __init__(self, pid: int, interval_s: float = 1.0) -> None:
        self.pid, self.interval_s = pid, interval_s
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()

    def _run(self) -> None:
        while True:
            self.samples.append((time.monotonic() - self._t0, rss_bytes(self.pid)))
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.samples.append((time.monotonic() - self._t0, rss_bytes(self.pid)))


class ServerProcess:
    """``cbir serve INDEX_DIR --port 0 [extra...]`` in a subprocess, stopped on exit.

    Args:
        index_dir: the index to serve.
        extra: more ``cbir serve`` arguments (e.g. ``--store milvus:FILE.db``).
        startup_timeout_s: how long to wait for the "serving" line.
    """

    def __init__(
        self,
        index_dir: str | os.PathLike[str],
        *extra: str,
        workers: int = 1,
        startup_timeout_s: float = 600.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.args = [sys.executable, "-m", "cbir.cli", "serve", str(index_dir), "--port", "0"]
        self.args += [*extra, *(["--workers", str(workers)] if workers > 1 else [])]
        self.workers = workers
        self.startup_timeout_s = startup_timeout_s
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.startup_s = 0.0
        self._err = tempfile.TemporaryFile("w+")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def stderr(self) -> str:
        self._err.seek(0)
        return self._err.read()

    def __enter__(self) -> ServerProcess:
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=self._err, text=True, env=self.env
        )
        lines: queue.Queue[str] = queue.Queue()
        out = self.proc.stdout
        assert out is not None

        def read() -> None:
            for x in out:
                lines.put(x)
            lines.put("")  # the server closed its output: it exited

        threading.Thread(target=read, daemon=True).start()
        try:
            line = lines.get(timeout=self.startup_timeout_s)
        except queue.Empty:
            self.__exit__()
            raise CbirError(
                f"cbir serve did not start in {self.startup_timeout_s:.0f} s: {self.stderr()[-500:]}"
            ) from None
        if not line.startswith("cbir: serving "):
            self.__exit__()
            raise CbirError(f"cbir serve failed: {line.strip()} {self.stderr()[-500:]}")
        self.url = line.split(" on ", 1)[1].split()[0].rstrip("/")
        ready = 0
        while ready < self.workers - (self.workers == 1):  # each worker loads the index
            left = self.startup_timeout_s - (time.perf_counter() - t0)
            try:
                line = lines.get(timeout=max(1.0, left))
            except queue.Empty:
                self.__exit__()
                raise CbirError(
                    f"{self.workers - ready} cbir serve worker(s) did not start"
                ) from None
            if not line:
                self.__exit__()
                raise CbirError(f"cbir serve exited while starting: {self.stderr()[-500:]}")
            ready += line.startswith("cbir: worker ")
        self.startup_s = time.perf_counter() - t0
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

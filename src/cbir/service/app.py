"""The search service: a FastAPI app over one index, with the web page at ``/``.

Reads (search, images, thumbnails) share one :class:`Searcher`, which picks up each new
commit; a search whose index generation changed while it ran is retried, so a response
reflects the index before an add/delete or after it, never half. Writes (add, delete)
need the API key (compared in constant time), are serialised in this process, and go
through :mod:`cbir.ops`. Every error is JSON: ``{"error": ..., "status": ..., "reason": ...}``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, Query, Request, Security, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cbir import ops
from cbir.data.images import decode, read_bytes, sniff, sniff_file
from cbir.errors import CbirError, ImageError, IndexWriteError
from cbir.search.searcher import Hit, Searcher
from cbir.utils import atomic_write_bytes

log = logging.getLogger("cbir.service")
T = TypeVar("T")

STATIC_DIR = Path(__file__).parent / "static"
DEFAULT_MAX_UPLOAD = 20 * 1024 * 1024
#: Room for multipart headers and small form fields on top of the upload itself.
FORM_OVERHEAD = 64 * 1024
#: Status code per :class:`ImageError` reason (anything else is 400).
IMAGE_ERROR_STATUS = {"not-an-image": 415, "unsupported-format": 415, "too-large": 413, "bomb": 413}
#: Ids are SQLite integers: larger numbers are refused as invalid (422), never passed on.
MAX_ID = 2**63 - 1
WHERE_HELP = "only images passing this filter, e.g. year < 1900 and artist contains 'gogh'"
#: Brute-force searches over at most this many floats (index size x dimension) run inline.
INLINE_WORK = 1 << 24
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MEDIA_TYPES = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "GIF": "image/gif",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}
CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self';"
    " connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


# ------------------------------------------------------------------- models
class HitOut(BaseModel):
    """One ranked result."""

    rank: int
    id: int
    path: str
    score: float
    distance: float | None = None
    tags: list[str]
    thumb: str = Field(description="URL of a JPEG thumbnail")
    image: str = Field(description="URL of the image itself")


class SearchOut(BaseModel):
    """Ranked results of one query."""

    query: str = Field(
        description="id:N or sha256:<hex> of the uploaded image (use it in /feedback)"
    )
    k: int
    tag: str | None
    where: str | None = Field(None, description="the filter applied, if any (cbir.search.where)")
    threshold: float | None = Field(description="the index's no-match threshold, if calibrated")
    no_match: bool = Field(description="true when the best score is below the threshold")
    generation: int
    results: list[HitOut]


class AddedOut(BaseModel):
    """An image added with POST /images."""

    id: int
    path: str
    sha256: str
    created: bool = Field(description="false when the same content was already uploaded")
    thumb: str
    image: str


class DeletedOut(BaseModel):
    deleted: list[int]


class FeedbackIn(BaseModel):
    """A judgement of one result of one query."""

    query: str = Field(
        pattern=r"^(id:\d{1,18}|sha256:[0-9a-f]{64})$", description="as /search returned it"
    )
    result_id: int = Field(ge=0, le=MAX_ID)
    relevant: bool


class FeedbackOut(BaseModel):
    id: int
    query_saved: bool = Field(description="the uploaded query image was kept for training")


class HealthOut(BaseModel):
    status: str
    images: int
    generation: int
    kind: str
    index_type: str
    threshold: float | None
    writes: bool = Field(description="whether an API key is configured (add/delete enabled)")


class ErrorOut(BaseModel):
    error: str
    status: int
    reason: str | None = None


ImageId = Annotated[int, PathParam(ge=0, le=MAX_ID, description="id of an indexed image")]

ERRORS: dict[int | str, dict[str, Any]] = {
    c: {"model": ErrorOut} for c in (400, 401, 403, 404, 409, 413, 415, 422, 503, 507)
}


# ------------------------------------------------------------------- errors
class ApiError(Exception):
    """A refusal with a status code and a one-line message."""

    def __init__(
        self,
        status: int,
        message: str,
        reason: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.reason, self.headers = status, message, reason, headers


def error_response(
    status: int, message: str, reason: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The JSON body every error has."""
    body: dict[str, Any] = {"error": message, "status": status}
    if reason:
        body["reason"] = reason
    return JSONResponse(body, status_code=status, headers=headers)


def json_response(model: BaseModel, status: int = 200) -> Response:
    """``model`` serialised once by pydantic (the route's response_model documents it)."""
    return Response(model.model_dump_json(), status, media_type="application/json")


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors()[:5]:
        loc = ".".join(
            str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path", "form")
        )
        parts.append(f"{loc or 'request'}: {e.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


# ------------------------------------------------------------------ metrics
def _label(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Request counters and latency histograms, written in the Prometheus text format."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = {}
        self.hist: dict[tuple[str, str], list[float]] = {}  # bucket counts..., sum, count

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (method, route, status)
            self.requests[key] = self.requests.get(key, 0) + 1
            h = self.hist.setdefault((method, route), [0.0] * (len(LATENCY_BUCKETS) + 2))
            for i, b in enumerate(LATENCY_BUCKETS):
                if seconds <= b:
                    h[i] += 1
            h[-2] += seconds
            h[-1] += 1

    def render(self, gauges: dict[str, tuple[str, float]]) -> str:
        """The exposition text: counters, histograms, then ``gauges`` (name -> (help, value))."""
        out = [
            "# HELP cbir_requests_total HTTP requests served, by method, route and status.",
            "# TYPE cbir_requests_total counter",
        ]
        with self._lock:
            requests = sorted(self.requests.items())
            hist = sorted((k, list(v)) for k, v in self.hist.items())
        for (m, r, s), n in requests:
            out.append(
                f'cbir_requests_total{{method="{_label(m)}",route="{_label(r)}",status="{s}"}} {n}'
            )
        out += [
            "# HELP cbir_request_duration_seconds Time to serve a request, by method and route.",
            "# TYPE cbir_request_duration_seconds histogram",
        ]
        for (m, r), h in hist:
            lab = f'method="{_label(m)}",route="{_label(r)}"'
            for i, b in enumerate(LATENCY_BUCKETS):
                out.append(f'cbir_request_duration_seconds_bucket{{{lab},le="{b:g}"}} {int(h[i])}')
            out.append(f'cbir_request_duration_seconds_bucket{{{lab},le="+Inf"}} {int(h[-1])}')
            out.append(f"cbir_request_duration_seconds_sum{{{lab}}} {h[-2]:.6f}")
            out.append(f"cbir_request_duration_seconds_count{{{lab}}} {int(h[-1])}")
        for name, (help_, value) in gauges.items():
            out += [f"# HELP {name} {help_}", f"# TYPE {name} gauge", f"{name} {value:g}"]
        return "\n".join(out) + "\n"


# ------------------------------------------------------------------ service
def open_searcher(index_dir: str | os.PathLike[str], store: str | None = None) -> Searcher:
    """The searcher of ``index_dir``: its faiss index, or ``store`` (``milvus:URI[#coll]``,
    ``shards:DIR``) as ``cbir search --store`` has it."""
    if not store:
        return Searcher(index_dir)
    from cbir.distributed.stores import open_store_searcher

    return open_store_searcher(index_dir, store)


def one_omp_thread() -> None:
    """Run faiss searches of this thread on one OpenMP thread (libgomp keeps it per thread).

    The service searches one query per request and gets its parallelism from concurrent
    requests. A team of OpenMP threads per single query waits at every barrier for a core:
    on a busy 2-core machine an HNSW search of one query took 20 ms with 2 threads and
    0.2 ms with 1 (see benchmarks/load.py).
    """
    import faiss

    if faiss.omp_get_max_threads() != 1:
        faiss.omp_set_num_threads(1)


class _LRU:
    """A small thread-safe LRU bounded by total bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._d: OrderedDict[Any, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: Any) -> bytes | None:
        with self._lock:
            v = self._d.get(key)
            if v is not None:
                self._d.move_to_end(key)
            return v

    def put(self, key: Any, value: bytes) -> None:
        if len(value) > self.max_bytes:
            return
        with self._lock:
            old = self._d.pop(key, None)
            self._size -= len(old) if old is not None else 0
            self._d[key] = value
            self._size += len(value)
            while self._size > self.max_bytes:
                _, v = self._d.popitem(last=False)
                self._size -= len(v)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


class Service:
    """What the routes share: the searcher, the write lock, caches and metrics."""

    def __init__(
        self,
        index_dir: str | os.PathLike[str],
        api_key: str | None,
        max_upload_bytes: int,
        max_k: int,
        thumb_size: int,
        feedback_needs_key: bool,
        store: str | None = None,
        embed_threads: int | None = None,
    ) -> None:
        self.index_dir = Path(index_dir)
        self.store_spec = store
        self.searcher = open_searcher(index_dir, store)
        self.store = self.searcher.store
        self.embed_threads = embed_threads
        self._backbone: Any = None
        self._key = _digest(api_key) if api_key else None
        self.max_upload_bytes = max_upload_bytes
        self.max_k = max_k
        self.thumb_size = thumb_size
        self.feedback_needs_key = feedback_needs_key
        self.write_lock = threading.Lock()
        self.metrics = Metrics()
        self.thumbs = _LRU(32 * 1024 * 1024)
        self.recent_queries = _LRU(64 * 1024 * 1024)
        self._feedback_store: Any = None
        index_type = str(self.store.config.get("index_type", ""))
        #: Brute-force float search: its cost grows with the index (see :meth:`inline_ok`).
        self._exhaustive = self.store.config.get("kind", "float") == "float" and not any(
            t in index_type.upper() for t in ("HNSW", "IVF", "NSG", "LSH")
        )

    # ------------------------------------------------------------ embedding
    @property
    def backbone(self) -> Any:
        """The index's backbone, with ``embed_threads`` onnxruntime threads per run."""
        if self._backbone is None:
            if self.embed_threads is None:
                self._backbone = self.searcher.backbone
            else:
                from cbir.backbones.registry import backbone_for

                # refuses another model with a clear message
                self._backbone = backbone_for(self.store, threads=self.embed_threads)
        return self._backbone

    def embed(self, data: bytes, name: str) -> np.ndarray:
        """Backbone features (1, dim) of an uploaded image; ImageError if it is not one."""
        bb = self.backbone
        img = decode(data, name, draft_size=bb.preprocess.size)
        return bb.run(bb.preprocess(img)[None])[0]

    def after_write(self) -> None:
        """Bring ``--store`` (Milvus collection, shard files) in step, then reload."""
        if self.store_spec:
            from cbir.distributed.stores import sync_store

            milvus = getattr(self.searcher, "milvus", None)
            if milvus is not None:
                from cbir.index.store import IndexStore

                st = IndexStore.open(self.index_dir)
                try:
                    milvus.sync(st)
                finally:
                    st.close()
            else:
                sync_store(str(self.index_dir), self.store_spec)
        self.searcher.refresh()

    # ------------------------------------------------------------- security
    @property
    def writes_enabled(self) -> bool:
        return self._key is not None

    def check_key(self, given: str | None) -> None:
        """Refuse (403 without a configured key, 401 for a missing or wrong one)."""
        if self._key is None:
            raise ApiError(
                403,
                "writes are disabled: start `cbir serve` with --api-key-file",
                "writes-disabled",
            )
        if not given:
            raise ApiError(
                401,
                "missing API key: send it in the X-API-Key header",
                "no-key",
                {"WWW-Authenticate": "ApiKey"},
            )
        if not hmac.compare_digest(_digest(given), self._key):
            raise ApiError(401, "wrong API key", "bad-key", {"WWW-Authenticate": "ApiKey"})

    # --------------------------------------------------------------- search
    def threshold(self) -> float | None:
        """The no-match threshold stored in the index meta (a number or {"score": ...})."""
        t = self.store.get_meta("threshold")
        if isinstance(t, dict):
            t = t.get("score")
        return float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else None

    def consistent_read(self, run: Callable[[], T]) -> tuple[T, int]:
        """Run a read until no commit happened during it; returns (result, generation)."""
        for attempt in range(20):
            g0 = self.store.generation
            try:
                out = run()
            except ImageError:
                raise
            except CbirError:
                if self.store.generation == g0 or attempt == 19:
                    raise
                continue  # a file of the old generation went away under us: read again
            if self.store.generation == g0:
                return out, g0
        return out, g0

    def search(
        self, features: np.ndarray, k: int, tag: str | None, where: Any = None
    ) -> tuple[list[tuple[Hit, Any]], int]:
        """Top-``k`` (hit, row) pairs (with ``tag`` only, if given; passing the parsed
        ``where`` filter, if given) at one generation."""

        def run() -> list[tuple[Hit, Any]]:
            one_omp_thread()
            kk = k if not tag else max(4 * k, 64)
            while True:
                if where is None:
                    hits = self.searcher.search_features(features, kk)[0]
                else:  # k passing images whenever k pass (cbir.search.filtered)
                    hits = self.searcher.search_features(features, kk, where)[0]
                rows = {r["id"]: r for r in self.store.rows([h.id for h in hits])}
                pairs = [(h, rows[h.id]) for h in hits if h.id in rows]
                if tag:
                    pairs = [(h, r) for h, r in pairs if tag in ops.tag_set(r["tags"])]
                if len(pairs) >= k or len(hits) < kk:  # enough, or the whole index seen
                    return pairs[:k]
                n = len(self.searcher)  # COUNT(*): only when filtering needs more
                if kk >= n:
                    return pairs[:k]
                kk = min(kk * 4, n)

        return self.consistent_read(run)

    def inline_ok(self) -> bool:
        """Whether a search by id may run on the event loop instead of a worker thread.

        Yes when the loaded index is current and answers in well under a millisecond: an
        HNSW, IVF or binary index, or brute force over at most :data:`INLINE_WORK` floats.
        The hop to a worker thread and back costs more than such a search (about a fifth of
        the server's CPU per request, see benchmarks/load.py). An index reload, Milvus,
        shards and large brute-force searches go to the thread pool.
        """
        s = self.searcher
        if type(s) is not Searcher or s._index is None or s._gen != self.store.generation:
            return False
        return not self._exhaustive or int(s._index.ntotal) * s.transform.dim <= INLINE_WORK

    def features_of(self, id_: int) -> np.ndarray:
        if self.store.row(id_) is None:
            raise ApiError(404, f"no image with id {id_}", "unknown-id")
        try:
            return self.store.features([id_])
        except CbirError:
            raise ApiError(404, f"no image with id {id_}", "unknown-id") from None

    def search_out(
        self, query: str, features: np.ndarray, k: int, tag: str | None, where: str | None = None
    ) -> SearchOut:
        if not 1 <= k <= self.max_k:
            raise ApiError(422, f"k must be between 1 and {self.max_k}", "bad-k")
        tag = (tag or "").strip().lower() or None
        where = (where or "").strip() or None
        if where is not None and type(self.searcher) is not Searcher:
            raise ApiError(400, "where filters need the embedded index (not --store)", "bad-where")
        parsed = self.searcher.where(where)  # a bad filter: CbirError -> 400 saying what is allowed
        pairs, gen = self.search(features, k, tag, parsed)
        thr = self.threshold()
        results = [
            HitOut(
                rank=i + 1,
                id=h.id,
                path=h.path,
                score=h.score,
                distance=h.distance,
                tags=[t for t in r["tags"].split(",") if t],
                thumb=f"/thumbs/{h.id}",
                image=f"/images/{h.id}",
            )
            for i, (h, r) in enumerate(pairs)
        ]
        no_match = thr is not None and (not results or results[0].score < thr)
        return SearchOut(
            query=query,
            k=k,
            tag=tag,
            where=where,
            threshold=thr,
            no_match=no_match,
            generation=gen,
            results=results,
        )

    # --------------------------------------------------------------- images
    def read_upload(self, file: UploadFile) -> bytes:
        """The uploaded bytes, refused (413) past the size limit."""
        data = file.file.read(self.max_upload_bytes + 1)
        if len(data) > self.max_upload_bytes:
            raise ApiError(
                413, f"upload larger than the limit of {self.max_upload_bytes} bytes", "too-large"
            )
        return data

    def row_or_404(self, id_: int) -> Any:
        row = self.store.row(id_)
        if row is None:
            raise ApiError(404, f"no image with id {id_}", "unknown-id")
        return row

    def thumbnail(self, id_: int) -> tuple[bytes, str]:
        row = self.row_or_404(id_)
        key = (id_, row["sha256"], self.thumb_size)
        data = self.thumbs.get(key)
        if data is None:
            try:
                img = decode(read_bytes(row["path"]), row["path"], draft_size=self.thumb_size)
            except ImageError as e:
                raise ApiError(
                    404, f"image {id_} cannot be read any more ({e.reason})", "file-unreadable"
                ) from None
            img.thumbnail((self.thumb_size, self.thumb_size), Image.BICUBIC)
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=82)
            data = buf.getvalue()
            self.thumbs.put(key, data)
        return data, row["sha256"]

    # ------------------------------------------------------------- feedback
    def add_feedback(self, fb: FeedbackIn) -> FeedbackOut:
        self.row_or_404(fb.result_id)
        saved = False
        if fb.query.startswith("sha256:"):
            sha = fb.query[7:]
            data = self.recent_queries.get(sha)
            if data is not None:
                ext = ops.EXTENSIONS.get(sniff(data[:16]) or "", "img")
                path = self.index_dir / "queries" / f"{sha}.{ext}"
                if not path.exists():
                    atomic_write_bytes(path, data)
                saved = True
            else:
                saved = any((self.index_dir / "queries").glob(f"{sha}.*"))
        elif self.store.row(int(fb.query[3:])) is None:
            raise ApiError(404, f"the query {fb.query} is not in the index", "unknown-id")
        with self.write_lock:
            if self._feedback_store is None:
                from cbir.index.store import IndexStore

                self._feedback_store = IndexStore.open(self.index_dir)
            fid = self._feedback_store.add_feedback(fb.query, fb.result_id, fb.relevant)
        return FeedbackOut(id=fid, query_saved=saved)

    def gauges(self) -> dict[str, tuple[str, float]]:
        fb = self.store.conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]
        return {
            "cbir_index_images": ("Images in the index.", float(self.store.count())),
            "cbir_index_generation": (
                "Commit generation of the index.",
                float(self.store.generation),
            ),
            "cbir_index_bytes": (
                "Size of the index directory's files.",
                float(self.store.size_on_disk()),
            ),
            "cbir_feedback_items": ("Feedback judgements stored.", float(fb)),
        }

    def close(self) -> None:
        self.searcher.close()
        if self._feedback_store is not None:
            self._feedback_store.close()


# --------------------------------------------------------------- middleware
def fast_search_query(qs: bytes, max_k: int) -> tuple[int, int] | None:
    """(id, k) of a plain ``id=N[&k=K]`` query (in any order, k in 1..max_k), else None.

    Anything else (a tag, other or repeated parameters, signs, k out of range) is left to
    the FastAPI route, which validates it and answers the errors.
    """
    out: dict[bytes, int] = {}
    for part in qs.split(b"&"):
        key, sep, val = part.partition(b"=")
        if not sep or key not in (b"id", b"k") or key in out or not val.isdigit() or len(val) > 18:
            return None
        out[key] = int(val)
    k = out.get(b"k", 10)
    if b"id" not in out or not 1 <= k <= max_k:
        return None
    return out[b"id"], k


class Guard:
    """Outermost layer: body size limit, early key check on writes, metrics, headers."""

    def __init__(self, app: ASGIApp, service: Service, routes: Any) -> None:
        self.app = app
        self.service = service
        self.routes = routes
        self.max_body = service.max_upload_bytes + FORM_OVERHEAD

    def _route(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is None:
            for r in self.routes():
                if r.matches(scope)[0] == Match.FULL:
                    route = r
                    break
        return getattr(route, "path", None) or "<unmatched>"

    def _needs_key(self, scope: Scope) -> bool:
        method, path = scope["method"], scope["path"]
        if method in ("POST", "DELETE", "PUT", "PATCH") and (
            path == "/images" or path.startswith("/images/")
        ):
            return True
        return self.service.feedback_needs_key and method == "POST" and path == "/feedback"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500
        path = scope["path"]
        csp = not (path.startswith("/docs") or path.startswith("/redoc"))

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                h = MutableHeaders(scope=message)
                h["X-Content-Type-Options"] = "nosniff"
                h["Referrer-Policy"] = "no-referrer"
                h["X-Frame-Options"] = "DENY"
                if csp:
                    h["Content-Security-Policy"] = CSP
            await send(message)

        received = 0

        async def receive_wrapper() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise HTTPException(
                        413, f"request body larger than the limit of {self.max_body} bytes"
                    )
            return message

        route: str | None = None
        try:
            if path == "/search" and scope["method"] == "GET":
                q = fast_search_query(scope.get("query_string", b""), self.service.max_k)
                if q is not None and await self._fast_search(q, send_wrapper):
                    route = "/search"
                    return
            refusal = self._refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send_wrapper)
                return
            await self.app(scope, receive_wrapper, send_wrapper)
        finally:
            self.service.metrics.observe(
                scope["method"], route or self._route(scope), status, time.perf_counter() - t0
            )

    async def _fast_search(self, q: tuple[int, int], send: Send) -> bool:
        """Answer a plain ``GET /search?id=N&k=K`` without FastAPI's routing and validation.

        The answer is the route's own (:meth:`Service.search_out`); about a third of the
        server's CPU per search went to the framework layers it skips (benchmarks/load.py).
        False, with nothing sent, when the search raised: the full route then answers, with
        its error (an unknown id, a failed read).
        """
        svc = self.service
        id_, k = q

        def run() -> bytes:
            out = svc.search_out(f"id:{id_}", svc.features_of(id_), k, None)
            return out.model_dump_json().encode()

        try:
            body = run() if svc.inline_ok() else await run_in_threadpool(run)
        except Exception:
            return False
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return True

    def _refusal(self, scope: Scope) -> Response | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        cl = headers.get("content-length")
        if cl is not None:
            if not cl.isdigit():
                return error_response(400, "invalid Content-Length header", "bad-request")
            if int(cl) > self.max_body:
                return error_response(
                    413,
                    f"request body of {cl} bytes is larger than the limit of {self.max_body}",
                    "too-large",
                )
        if self._needs_key(scope):
            try:
                self.service.check_key(headers.get("x-api-key"))
            except ApiError as e:
                return error_response(e.status, e.message, e.reason, e.headers)
        return None


# ---------------------------------------------------------------------- app
def create_app(
    index_dir: str | os.PathLike[str],
    api_key: str | None = None,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
    max_k: int = 100,
    thumb_size: int = 192,
    feedback_needs_key: bool = False,
    write_wait_s: float = 30.0,
    store: str | None = None,
    embed_threads: int | None = None,
) -> FastAPI:
    """The service for ``index_dir``.

    Args:
        api_key: the key that POST /images and DELETE /images/{id} need (None: writes refused).
        max_upload_bytes: largest accepted image upload.
        max_k: largest ``k`` a search may ask for.
        thumb_size: longest side of thumbnails, in pixels.
        feedback_needs_key: also require the key for POST /feedback.
        write_wait_s: how long a write waits for another writer (then 503).
        store: answer searches from ``milvus:URI[#collection]`` or ``shards:DIR`` (kept in
            step after each add and delete) instead of the index's faiss file.
        embed_threads: onnxruntime threads per upload (None: the backbone's default, all
            cores); concurrent uploads run in parallel either way.
    """
    svc = Service(
        index_dir, api_key, max_upload_bytes, max_k, thumb_size, feedback_needs_key,
        store=store, embed_threads=embed_threads,
    )  # fmt: skip

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        svc.close()

    app = FastAPI(
        lifespan=lifespan,
        title="cbir",
        version="0.1.0",
        description="Content-based image retrieval: search an index by image or by id.",
        responses=ERRORS,
    )
    app.state.service = svc
    app.add_middleware(Guard, service=svc, routes=lambda: app.router.routes)
    api_key_header = APIKeyHeader(
        name="X-API-Key", auto_error=False, description="needed by writes"
    )

    def require_key(key: str | None = Security(api_key_header)) -> None:
        svc.check_key(key)

    # ----------------------------------------------------------- handlers
    @app.exception_handler(ApiError)
    def _api_error(_: Request, e: ApiError) -> JSONResponse:
        return error_response(e.status, e.message, e.reason, e.headers)

    @app.exception_handler(ImageError)
    def _image_error(_: Request, e: ImageError) -> JSONResponse:
        status = IMAGE_ERROR_STATUS.get(e.reason, 400)
        detail = f" ({e.detail})" if e.detail else ""
        return error_response(status, f"{e.path}: {e.reason}{detail}", e.reason)

    @app.exception_handler(ops.IndexBusyError)
    def _busy(_: Request, e: ops.IndexBusyError) -> JSONResponse:
        return error_response(503, str(e), "busy", {"Retry-After": "5"})

    @app.exception_handler(IndexWriteError)
    def _write_error(_: Request, e: IndexWriteError) -> JSONResponse:
        return error_response(507, str(e), "index-not-writable")

    @app.exception_handler(CbirError)
    def _cbir_error(_: Request, e: CbirError) -> JSONResponse:
        return error_response(400, str(e), "bad-request")

    @app.exception_handler(StarletteHTTPException)
    def _http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        reason = {404: "not-found", 405: "method-not-allowed", 413: "too-large"}.get(e.status_code)
        return error_response(e.status_code, str(e.detail), reason, getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        return error_response(422, _validation_message(e), "invalid")

    @app.exception_handler(Exception)
    def _internal(request: Request, e: Exception) -> JSONResponse:
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=e)
        return error_response(500, "internal server error (see the server log)", "internal")

    # ------------------------------------------------------------- routes
    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.post("/search", response_model=SearchOut, summary="Search by an uploaded image")
    def search_upload(
        file: UploadFile = File(
            ..., description="the query image (JPEG, PNG, GIF, WebP, BMP, TIFF)"
        ),
        k: int = Form(10, description=f"number of results (1..{max_k})"),
        tag: str | None = Form(
            None, max_length=ops.MAX_TAG_LEN, description="only images with this tag"
        ),
        where: str | None = Form(None, max_length=2000, description=WHERE_HELP),
    ) -> Response:
        data = svc.read_upload(file)
        feats = svc.embed(data, file.filename or "upload")
        sha = hashlib.sha256(data).hexdigest()
        svc.recent_queries.put(sha, data)
        return json_response(svc.search_out(f"sha256:{sha}", feats, k, tag, where))

    @app.get("/search", response_model=SearchOut, summary="Search by an indexed image's id")
    async def search_id(
        id: int = Query(..., ge=0, le=MAX_ID, description="id of an indexed image"),
        k: int = Query(10, description=f"number of results (1..{max_k})"),
        tag: str | None = Query(
            None, max_length=ops.MAX_TAG_LEN, description="only images with this tag"
        ),
        where: str | None = Query(None, max_length=2000, description=WHERE_HELP),
    ) -> Response:
        def run() -> Response:
            return json_response(svc.search_out(f"id:{id}", svc.features_of(id), k, tag, where))

        return run() if svc.inline_ok() and not where else await run_in_threadpool(run)

    @app.get(
        "/images/{id}",
        summary="An indexed image, by id",
        response_class=FileResponse,
        responses={200: {"content": {"image/*": {}}}},
    )
    def image(id: ImageId) -> FileResponse:
        row = svc.row_or_404(id)
        fmt = sniff_file(row["path"])
        if fmt is None:
            raise ApiError(404, f"image {id} cannot be read any more", "file-unreadable")
        return FileResponse(
            row["path"],
            media_type=MEDIA_TYPES.get(fmt, "application/octet-stream"),
            headers={"Cache-Control": "private, max-age=60"},
        )

    @app.get(
        "/thumbs/{id}",
        summary="A JPEG thumbnail of an indexed image, by id",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}},
    )
    def thumb(id: ImageId, request: Request) -> Response:
        data, sha = svc.thumbnail(id)
        etag = f'"{sha[:32]}-{svc.thumb_size}"'
        headers = {"ETag": etag, "Cache-Control": "private, max-age=60"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(data, media_type="image/jpeg", headers=headers)

    @app.post(
        "/images",
        response_model=AddedOut,
        status_code=201,
        summary="Add an uploaded image (needs the key)",
        dependencies=[Security(require_key)],
        responses={200: {"model": AddedOut}},
    )
    def add_image(
        response: Response,
        file: UploadFile = File(..., description="the image to add"),
        tags: str | None = Form(None, description="comma-separated tags"),
    ) -> AddedOut:
        data = svc.read_upload(file)
        with svc.write_lock:
            added = ops.add_image_bytes(
                svc.index_dir, data, file.filename or "upload", tags, wait_s=write_wait_s
            )
        svc.after_write()
        if not added.created:
            response.status_code = 200
        return AddedOut(
            id=added.id,
            path=added.path,
            sha256=added.sha256,
            created=added.created,
            thumb=f"/thumbs/{added.id}",
            image=f"/images/{added.id}",
        )

    @app.delete(
        "/images/{id}",
        response_model=DeletedOut,
        summary="Delete an image (needs the key)",
        dependencies=[Security(require_key)],
    )
    def delete_image(id: ImageId) -> DeletedOut:
        with svc.write_lock:
            deleted = ops.delete_ids(svc.index_dir, [id], wait_s=write_wait_s)
        if not deleted:
            raise ApiError(404, f"no image with id {id}", "unknown-id")
        svc.after_write()
        return DeletedOut(deleted=deleted)

    @app.post(
        "/feedback",
        response_model=FeedbackOut,
        status_code=201,
        summary="Mark a result of a query relevant or not (stored in the index)",
    )
    def feedback(fb: FeedbackIn, request: Request) -> FeedbackOut:
        if svc.feedback_needs_key:
            svc.check_key(request.headers.get("x-api-key"))
        return svc.add_feedback(fb)

    @app.get("/health", response_model=HealthOut, summary="Liveness and index summary")
    def health() -> HealthOut:
        cfg = svc.store.config
        return HealthOut(
            status="ok",
            images=svc.store.count(),
            generation=svc.store.generation,
            kind=cfg.get("kind", "float"),
            index_type=cfg["index_type"],
            threshold=svc.threshold(),
            writes=svc.writes_enabled,
        )

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(
            svc.metrics.render(svc.gauges()), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    return app

"""The search service: a FastAPI app over one index, with the web page at ``/``.

:func:`create_app` wires the parts: :class:`~cbir.service.service.Service` (searcher,
embedding, writes), :func:`~cbir.service.routes.add_routes`, the error handlers below and
:class:`~cbir.service.guard.Guard` (API key, body limits, metrics, headers) in front.
Writes (add, delete, feedback) need the API key (compared in constant time by the Guard), are
serialised in this process, and go through :mod:`cbir.ops`. Every error is JSON:
``{"error": ..., "status": ..., "reason": ...}`` (:mod:`cbir.service.schemas`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cbir import ops
from cbir.errors import CbirError, ImageError, IndexWriteError
from cbir.service.guard import LOOPBACK_HOSTS, AllowedHosts, ApiKey, Guard
from cbir.service.routes import add_routes
from cbir.service.schemas import ERRORS, ApiError, error_response, validation_message
from cbir.service.service import Service

__all__ = ["DEFAULT_MAX_UPLOAD", "DEFAULT_QUERY_BYTES", "create_app"]

log = logging.getLogger("cbir.service")

DEFAULT_MAX_UPLOAD = 20 * 1024 * 1024
DEFAULT_FEEDBACK_PER_QUERY = 1000
DEFAULT_QUERY_BYTES = 512 * 1024 * 1024
#: Status code per :class:`ImageError` reason (anything else is 400).
IMAGE_ERROR_STATUS = {"not-an-image": 415, "unsupported-format": 415, "too-large": 413, "bomb": 413}


def create_app(
    index_dir: str | os.PathLike[str],
    api_key: str | None = None,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
    max_k: int = 100,
    thumb_size: int = 192,
    write_wait_s: float = 30.0,
    store: str | None = None,
    embed_threads: int | None = None,
    allowed_hosts: Sequence[str] | AllowedHosts = LOOPBACK_HOSTS,
    max_feedback_per_query: int = DEFAULT_FEEDBACK_PER_QUERY,
    max_query_bytes: int = DEFAULT_QUERY_BYTES,
    decode_slots: int | None = None,
    sketch_model: str | os.PathLike[str] | None = None,
) -> FastAPI:
    """The service for ``index_dir``.

    Args:
        api_key: the key that writes need: POST /images, DELETE /images/{id} and
            POST /feedback (None: writes refused, 403).
        max_upload_bytes: largest accepted image upload.
        max_k: largest ``k`` a search may ask for.
        thumb_size: longest side of thumbnails, in pixels.
        write_wait_s: how long a write waits for another writer (then 503).
        allowed_hosts: the ``Host`` header names answered (others: 400); the loopback
            names by default (``cbir serve`` passes ``AllowedHosts.for_bind``).
        max_feedback_per_query: judgements stored per query (then 429).
        max_query_bytes: bytes of query uploads kept under ``INDEX/queries/`` for
            training (then 507).
        decode_slots: uploads decoded at once (None: :data:`DEFAULT_DECODE_SLOTS`).
        store: answer searches from ``milvus:URI[#collection]`` or ``shards:DIR`` (kept in
            step after each add and delete) instead of the index's faiss file.
        embed_threads: onnxruntime threads per upload (None: the backbone's default, all
            cores); concurrent uploads run in parallel either way.
        sketch_model: a ``cbir train --method sketch`` run: ``POST /search/sketch``
            searches by a drawing (:mod:`cbir.search.sketch`; None: that route answers 404).
    """
    svc = Service(
        index_dir,
        max_upload_bytes=max_upload_bytes,
        max_k=max_k,
        thumb_size=thumb_size,
        write_wait_s=write_wait_s,
        store=store,
        embed_threads=embed_threads,
        max_feedback_per_query=max_feedback_per_query,
        max_query_bytes=max_query_bytes,
        decode_slots=decode_slots,
    )
    if sketch_model is not None:
        from cbir.search.sketch import open_sketch_model

        try:
            svc.sketch_model = open_sketch_model(sketch_model, svc.store)
        except BaseException:
            svc.close()
            raise
    key = ApiKey(api_key)
    hosts = (
        allowed_hosts if isinstance(allowed_hosts, AllowedHosts) else AllowedHosts(allowed_hosts)
    )

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
    app.add_middleware(Guard, service=svc, routes=lambda: app.router.routes, key=key, hosts=hosts)
    add_error_handlers(app)
    add_routes(app, svc, writes_enabled=key.enabled)
    return app


def add_error_handlers(app: FastAPI) -> None:
    """Answer every error as JSON, with the status code its kind calls for."""

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
        return error_response(422, validation_message(e), "invalid")

    @app.exception_handler(Exception)
    def _internal(request: Request, e: Exception) -> JSONResponse:
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=e)
        return error_response(500, "internal server error (see the server log)", "internal")

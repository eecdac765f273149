"""The HTTP routes of the service: search (by upload, by id), images, thumbnails, writes,
feedback, health, metrics, and the web page at ``/``.

The routes do no access control: :class:`cbir.service.guard.Guard` checks the API key
before a request gets here. Writes still declare the ``X-API-Key`` header so that the
OpenAPI document shows which endpoints need it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

from fastapi import FastAPI, File, Form, Query, Request, Security, UploadFile
from fastapi.responses import FileResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from cbir import ops
from cbir.service.schemas import (
    MAX_ID,
    WHERE_HELP,
    AddedOut,
    ApiError,
    DeletedOut,
    ErrorOut,
    FeedbackIn,
    FeedbackOut,
    HealthOut,
    ImageId,
    SearchOut,
    json_response,
)
from cbir.service.service import Service

T = TypeVar("T")
STATIC_DIR = Path(__file__).parent / "static"
MEDIA_TYPES = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "GIF": "image/gif",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}
#: Documents the key header in OpenAPI; reading it checks nothing (the Guard does).
KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="needed by writes")


def one_of(name: str, form: T | None, url: T | None) -> T | None:
    """A search option given in the form or in the URL (422 when both, differently)."""
    if form is not None and url is not None and form != url:
        raise ApiError(
            422, f"{name} is given twice, differently, in the URL and the form", "invalid"
        )
    return form if form is not None else url


def add_routes(app: FastAPI, svc: Service, writes_enabled: bool) -> None:
    """Add every route of the service to ``app``, answering from ``svc``.

    Args:
        writes_enabled: whether an API key is configured (reported by ``/health``).
    """
    max_k = svc.max_k

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.post("/search", response_model=SearchOut, summary="Search by an uploaded image")
    def search_upload(
        file: UploadFile = File(
            ..., description="the query image (JPEG, PNG, GIF, WebP, BMP, TIFF)"
        ),
        k: int | None = Form(None, description=f"number of results (1..{max_k}; default 10)"),
        tag: str | None = Form(
            None, max_length=ops.MAX_TAG_LEN, description="only images with this tag"
        ),
        where: str | None = Form(None, max_length=2000, description=WHERE_HELP),
        k_url: int | None = Query(None, alias="k", description="k in the URL instead"),
        tag_url: str | None = Query(
            None, alias="tag", max_length=ops.MAX_TAG_LEN, description="tag in the URL instead"
        ),
        where_url: str | None = Query(
            None, alias="where", max_length=2000, description="where in the URL instead"
        ),
    ) -> Response:
        k = one_of("k", k, k_url)
        tag = one_of("tag", tag, tag_url)
        where = one_of("where", where, where_url)
        data = svc.read_upload(file)
        feats = svc.embed(data, file.filename or "upload")
        sha = hashlib.sha256(data).hexdigest()
        svc.recent_queries.put(sha, data)
        return json_response(
            svc.search_out(f"sha256:{sha}", feats, 10 if k is None else k, tag, where)
        )

    @app.post(
        "/search/sketch",
        response_model=SearchOut,
        summary="Search by a drawing (needs cbir serve --sketch-model)",
    )
    def search_sketch(
        file: UploadFile = File(..., description="the drawing: dark strokes on light (PNG)"),
        k: int | None = Form(None, description=f"number of results (1..{max_k}; default 10)"),
        tag: str | None = Form(
            None, max_length=ops.MAX_TAG_LEN, description="only images with this tag"
        ),
        where: str | None = Form(None, max_length=2000, description=WHERE_HELP),
    ) -> Response:
        from cbir.search.sketch import drawing_features

        model = svc.sketch_model
        if model is None:
            raise ApiError(
                404,
                "this server has no sketch model; start it with"
                " `cbir serve INDEX --sketch-model RUN_DIR`",
                "no-sketch-model",
            )
        data = svc.read_upload(file)
        feats = drawing_features(svc.backbone, data, file.filename or "drawing")
        sha = hashlib.sha256(data).hexdigest()
        return json_response(
            svc.search_out(f"sketch:{sha}", model(feats), 10 if k is None else k, tag, where)
        )

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

    @app.get("/search/text", response_model=SearchOut, summary="Search by text")
    def search_text(
        q: str = Query(..., min_length=1, max_length=1000, description="the words"),
        k: int = Query(10, description=f"number of results (1..{max_k})"),
        tag: str | None = Query(
            None, max_length=ops.MAX_TAG_LEN, description="only images with this tag"
        ),
        where: str | None = Query(None, max_length=2000, description=WHERE_HELP),
        mode: str = Query(
            "auto",
            pattern="^(auto|metadata|classes|joint|backbone)$",
            description="as cbir search --text-mode: auto picks the index's image-text"
            " backbone when it has one (docs/text.md)",
        ),
    ) -> Response:
        return json_response(svc.search_text_out(q, k, tag, where, mode))

    @app.get(
        "/images/{id}",
        summary="An indexed image, by id",
        response_class=FileResponse,
        responses={200: {"content": {"image/*": {}}}, 409: {"model": ErrorOut}},
    )
    def image(id: ImageId) -> StreamingResponse:
        row = svc.row_or_404(id)
        f, st = svc.open_image(row)  # 404 gone, 409 changed since indexing
        try:
            fmt = svc.image_format(f, id)
        except BaseException:
            f.close()
            raise

        def chunks() -> Iterator[bytes]:
            with f:
                yield from iter(lambda: f.read(1 << 16), b"")

        return StreamingResponse(
            chunks(),
            media_type=MEDIA_TYPES.get(fmt, "application/octet-stream"),
            headers={"Cache-Control": "private, max-age=60", "Content-Length": str(st.st_size)},
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
        dependencies=[Security(KEY_HEADER)],
        responses={200: {"model": AddedOut}},
    )
    def add_image(
        response: Response,
        file: UploadFile = File(..., description="the image to add"),
        tags: str | None = Form(None, description="comma-separated tags"),
    ) -> AddedOut:
        added = svc.add(svc.read_upload(file), file.filename or "upload", tags)
        if not added.created:
            response.status_code = 200
        return AddedOut(
            id=added.id,
            path=svc.public_path(added.path),
            sha256=added.sha256,
            created=added.created,
            thumb=f"/thumbs/{added.id}",
            image=f"/images/{added.id}",
        )

    @app.delete(
        "/images/{id}",
        response_model=DeletedOut,
        summary="Delete an image (needs the key)",
        dependencies=[Security(KEY_HEADER)],
    )
    def delete_image(id: ImageId) -> DeletedOut:
        return DeletedOut(deleted=svc.delete(id))

    @app.post(
        "/feedback",
        response_model=FeedbackOut,
        status_code=201,
        summary="Mark a result of a query relevant or not (stored in the index; needs the key)",
        dependencies=[Security(KEY_HEADER)],
    )
    def feedback(fb: FeedbackIn) -> FeedbackOut:
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
            writes=writes_enabled,
            sketch=svc.sketch_model is not None,
        )

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(
            svc.metrics.render(svc.gauges()), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

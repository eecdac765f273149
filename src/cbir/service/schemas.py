"""What the service's API takes and returns: request and response models, and the one
JSON shape every error has (``{"error": ..., "status": ..., "reason": ...}``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

#: Ids are SQLite integers: larger numbers are refused as invalid (422), never passed on.
MAX_ID = 2**63 - 1
WHERE_HELP = "only images passing this filter, e.g. year < 1900 and artist contains 'gogh'"


# ------------------------------------------------------------------- models
class HitOut(BaseModel):
    """One ranked result."""

    rank: int
    id: int
    path: str = Field(description="relative to the indexed folder (uploads: to the index)")
    score: float
    distance: float | None = None
    tags: list[str]
    thumb: str = Field(description="URL of a JPEG thumbnail")
    image: str = Field(description="URL of the image itself")


class SearchOut(BaseModel):
    """Ranked results of one query."""

    query: str = Field(
        description="id:N or sha256:<hex> of the uploaded image (use it in /feedback),"
        " or text:<the words> of a text search"
    )
    k: int
    tag: str | None
    where: str | None = Field(None, description="the filter applied, if any (cbir.search.where)")
    threshold: float | None = Field(description="the index's no-match threshold, if calibrated")
    no_match: bool = Field(description="true when the best score is below the threshold")
    generation: int
    results: list[HitOut]
    hint: str | None = Field(
        None, description="text search only: why nothing was found, and what to try"
    )


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
    sketch: bool = Field(False, description="whether POST /search/sketch answers (a sketch model)")


class ErrorOut(BaseModel):
    error: str
    status: int
    reason: str | None = None


ImageId = Annotated[int, PathParam(ge=0, le=MAX_ID, description="id of an indexed image")]

ERRORS: dict[int | str, dict[str, Any]] = {
    c: {"model": ErrorOut} for c in (400, 401, 403, 404, 409, 413, 415, 422, 429, 503, 507)
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


def validation_message(exc: RequestValidationError) -> str:
    """One line naming up to five invalid fields of a request."""
    parts = []
    for e in exc.errors()[:5]:
        loc = ".".join(
            str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path", "form")
        )
        parts.append(f"{loc or 'request'}: {e.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)

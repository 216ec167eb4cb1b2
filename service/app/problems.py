"""The single table from errors to HTTP: every error leaves as ``application/problem+json``.

Bad input is always a 4xx naming the problem; a 500 means a bug, and its body says nothing internal.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cpcnn.errors import (
    ConflictError,
    CpcnnError,
    InputError,
    NotFoundError,
    PayloadTooLarge,
    UnavailableError,
    UnsupportedMedia,
)
from cpcnn.schemas import MEDIA_PROBLEM, Problem

logger = logging.getLogger(__name__)

#: Most specific first: (error class, HTTP status, title, code).
ERROR_TABLE: tuple[tuple[type[CpcnnError], int, str, str], ...] = (
    (PayloadTooLarge, 413, "Payload too large", "payload_too_large"),
    (UnsupportedMedia, 415, "Unsupported media type", "unsupported_media"),
    (InputError, 422, "Invalid input", "input_error"),
    (NotFoundError, 404, "Not found", "not_found"),
    (ConflictError, 409, "Conflict", "conflict"),
    (UnavailableError, 503, "Service unavailable", "unavailable"),
)

_HTTP_CODES = {
    400: ("Bad request", "bad_request"),
    401: ("Unauthorized", "unauthorized"),
    404: ("Not found", "not_found"),
    405: ("Method not allowed", "method_not_allowed"),
    406: ("Not acceptable", "not_acceptable"),
    408: ("Request timeout", "timeout"),
    413: ("Payload too large", "payload_too_large"),
    415: ("Unsupported media type", "unsupported_media"),
    422: ("Invalid input", "input_error"),
    503: ("Service unavailable", "unavailable"),
}


def problem_for_error(exc: CpcnnError, instance: str | None = None) -> Problem:
    for cls, status, title, code in ERROR_TABLE:
        if isinstance(exc, cls):
            extra: dict[str, Any] = {}
            if isinstance(exc, UnavailableError):
                extra["retry_after_s"] = exc.retry_after_s
            return Problem(title=title, status=status, detail=str(exc), code=code, instance=instance, **extra)
    return Problem(title="Internal error", status=500, detail=str(exc), code="internal", instance=instance)


def problem_response(problem: Problem, headers: Mapping[str, str] | None = None) -> JSONResponse:
    headers = dict(headers or {})
    if problem.retry_after_s is not None:
        headers["Retry-After"] = str(problem.retry_after_s)
    return JSONResponse(
        problem.model_dump(mode="json", exclude_none=True), status_code=problem.status,
        media_type=MEDIA_PROBLEM, headers=headers,
    )


def http_problem(status: int, detail: str, instance: str | None = None) -> Problem:
    title, code = _HTTP_CODES.get(status, ("Error", "error"))
    return Problem(title=title, status=status, detail=detail, code=code, instance=instance)


async def _on_cpcnn_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CpcnnError)
    problem = problem_for_error(exc, request.url.path)
    if problem.status >= 500 and problem.status != 503:
        logger.error("unexpected %s on %s: %s", type(exc).__name__, request.url.path, exc)
    return problem_response(problem)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": [str(p) for p in err.get("loc", ())], "msg": str(err.get("msg", "")), "type": str(err.get("type", ""))}
        for err in exc.errors()
    ]
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(first["loc"][1:] or first["loc"]) or "request"
    problem = Problem(
        title="Invalid input", status=422, detail=f"{where}: {first['msg']}", code="input_error",
        instance=request.url.path, errors=errors,
    )
    return problem_response(problem)


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return problem_response(http_problem(exc.status_code, detail, request.url.path), headers=exc.headers)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    problem = Problem(title="Internal error", status=500, detail="internal server error; see the server log",
                      code="internal", instance=request.url.path)
    return problem_response(problem)


def install(app: FastAPI) -> None:
    """Register the handlers on an app."""
    app.add_exception_handler(CpcnnError, _on_cpcnn_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "description": title, "content": {MEDIA_PROBLEM: {}}}
    for status, (title, _) in _HTTP_CODES.items()
    if status not in (405, 408)
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries for the given error statuses."""
    return {status: PROBLEM_RESPONSES[status] for status in statuses}

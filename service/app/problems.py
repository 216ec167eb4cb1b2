"""Every error leaves as ``application/problem+json``, with the status, code and title its class declares.

There is no table here: ``cpcnn.errors`` declares each kind once, ``Problem.from_error`` reads a raised
error's declaration, and ``http_problem`` finds the declaration for a status the framework raises.

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

from cpcnn import errors
from cpcnn.errors import CpcnnError, InputError
from cpcnn.schemas import MEDIA_PROBLEM, Problem

logger = logging.getLogger(__name__)


def problem_response(problem: Problem, headers: Mapping[str, str] | None = None) -> JSONResponse:
    headers = dict(headers or {})
    if problem.retry_after_s is not None:
        headers["Retry-After"] = str(problem.retry_after_s)
    return JSONResponse(
        problem.model_dump(mode="json", exclude_none=True), status_code=problem.status,
        media_type=MEDIA_PROBLEM, headers=headers,
    )


def http_problem(status: int, detail: str, instance: str | None = None) -> Problem:
    """A status raised by the framework (or by middleware) in the vocabulary of ``cpcnn.errors``."""
    kind = errors.for_status(status)
    if kind is None:
        return Problem(title="Error", status=status, detail=detail, code="error", instance=instance)
    return Problem.of(kind, detail, instance)


async def _on_cpcnn_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CpcnnError)
    problem = Problem.from_error(exc, request.url.path)
    if problem.status >= 500 and problem.status != 503:
        logger.error("unexpected %s on %s: %s", type(exc).__name__, request.url.path, exc)
    return problem_response(problem)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [
        {"loc": [str(p) for p in err.get("loc", ())], "msg": str(err.get("msg", "")), "type": str(err.get("type", ""))}
        for err in exc.errors()
    ]
    first = details[0] if details else {"loc": [], "msg": "invalid request"}
    where = ".".join(first["loc"][1:] or first["loc"]) or "request"
    problem = Problem.of(InputError, f"{where}: {first['msg']}", request.url.path, errors=details)
    return problem_response(problem)


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return problem_response(http_problem(exc.status_code, detail, request.url.path), headers=exc.headers)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    problem = Problem.of(CpcnnError, "internal server error; see the server log", request.url.path)
    return problem_response(problem)


def install(app: FastAPI) -> None:
    """Register the handlers on an app."""
    app.add_exception_handler(CpcnnError, _on_cpcnn_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries for the given error statuses, described by their declared titles."""
    declared = errors.declared()
    return {
        status: {"model": Problem, "description": declared[status].title, "content": {MEDIA_PROBLEM: {}}}
        for status in statuses
    }

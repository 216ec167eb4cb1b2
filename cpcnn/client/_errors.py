"""Exceptions the SDK raises, grouped by what the caller can do next.

    CpcnnError                      (cpcnn.errors)
    ├── ApiError                    the server answered with an error: .status_code, .problem
    │   ├── BadRequest              400/422: fix the input (also an InputError)
    │   ├── PayloadTooLargeError    413: send less (also a PayloadTooLarge)
    │   ├── UnsupportedMediaError   415: send another format (also an UnsupportedMedia)
    │   ├── Unauthorized            401/403: check the API key
    │   ├── NotFound                404 (also a NotFoundError)
    │   ├── Conflict                409, e.g. a result asked for before the job finished
    │   ├── ServiceUnavailable      503 after all retries (also an UnavailableError)
    │   ├── ServerError             other 5xx: a server bug; the server log has details
    │   └── JobFailed               the job ended failed: .job, .problem
    ├── TransportError              no answer after all retries (wraps httpx's error)
    └── JobTimeout                  the job did not finish in the time given (also a TimeoutError)

Each message is the server's own ``detail`` line, so ``str(exc)`` says what was wrong.
"""

from __future__ import annotations

from typing import Any

from cpcnn.errors import (
    ConflictError,
    CpcnnError,
    InputError,
    NotFoundError,
    PayloadTooLarge,
    UnavailableError,
    UnsupportedMedia,
)
from cpcnn.schemas import JobPublic, Problem


class ApiError(CpcnnError):
    """The server answered ``status_code`` with a problem body."""

    def __init__(self, message: str, *, status_code: int, problem: Problem | None = None) -> None:
        Exception.__init__(self, message)
        self.status_code = status_code
        self.problem = problem


class BadRequest(ApiError, InputError):
    """400 or 422: the request or its data is wrong."""


class PayloadTooLargeError(ApiError, PayloadTooLarge):
    """413: an upload, image or cell count is over the server's limit."""


class UnsupportedMediaError(ApiError, UnsupportedMedia):
    """415: bytes the server cannot decode."""


class Unauthorized(ApiError):
    """401 or 403: missing or wrong API key."""


class NotFound(ApiError, NotFoundError):
    """404: no such job or model."""


class Conflict(ApiError, ConflictError):
    """409: the job is not in a state that allows this (e.g. still running)."""


class ServiceUnavailable(ApiError, UnavailableError):
    """503 after every retry: queue full or Redis down; ``retry_after_s`` says when to try again."""

    def __init__(self, message: str, *, status_code: int, problem: Problem | None = None, retry_after_s: int = 5) -> None:
        super().__init__(message, status_code=status_code, problem=problem)
        self.retry_after_s = retry_after_s


class ServerError(ApiError):
    """Any other 5xx."""


class JobFailed(ApiError):
    """The job finished as failed; ``problem`` is why."""

    def __init__(self, job: JobPublic) -> None:
        problem = job.error
        detail = problem.detail if problem else "unknown error"
        super().__init__(f"job {job.id} failed: {detail}", status_code=problem.status if problem else 500, problem=problem)
        self.job = job
        self.job_id = job.id


class TransportError(CpcnnError):
    """The server could not be reached (or stopped answering) after every retry."""


class JobTimeout(CpcnnError, TimeoutError):
    """A job did not finish within the caller's timeout; it may still finish later."""

    def __init__(self, message: str, *, job_id: str) -> None:
        super().__init__(message)
        self.job_id = job_id


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest, 422: BadRequest, 401: Unauthorized, 403: Unauthorized, 404: NotFound, 409: Conflict,
    413: PayloadTooLargeError, 415: UnsupportedMediaError, 503: ServiceUnavailable,
}


def error_from_response(status_code: int, body: Any, retry_after: str | None = None) -> ApiError:
    """Status code + decoded body -> the matching exception, carrying the server's message."""
    problem: Problem | None = None
    if isinstance(body, dict) and "detail" in body and "title" in body:
        try:
            problem = Problem.model_validate(body | {"status": body.get("status", status_code),
                                                     "code": body.get("code", "error")})
        except ValueError:
            problem = None
    if problem is not None:
        message = problem.detail
    elif isinstance(body, dict) and "detail" in body:
        message = str(body["detail"])
    else:
        message = f"HTTP {status_code}: {str(body)[:300]}"
    cls = _BY_STATUS.get(status_code, ServerError if status_code >= 500 else BadRequest)
    if cls is ServiceUnavailable:
        seconds = int(retry_after) if retry_after and retry_after.isdigit() else 5
        return ServiceUnavailable(message, status_code=status_code, problem=problem, retry_after_s=seconds)
    return cls(message, status_code=status_code, problem=problem)

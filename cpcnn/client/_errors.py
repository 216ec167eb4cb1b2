"""Exceptions the SDK raises: the domain's error vocabulary, as answered by a server.

Every error the server answers is an ``ApiError`` (``.status_code``, ``.problem``) and an instance of
the ``cpcnn.errors`` class declared for its status, under the same name, so ``except NotFoundError``
works the same around local code and around a client call:

    CpcnnError                       (cpcnn.errors)
    ├── ApiError                     the server answered with an error: .status_code, .problem
    │   ├── <each declared kind>     same name as in cpcnn.errors and a subclass of it, e.g.
    │   │                            NotFoundError, PayloadTooLarge, UnavailableError (.retry_after_s);
    │   │                            InputError also stands for a 4xx no kind declares, and
    │   │                            UnauthorizedError for a 403
    │   ├── ServerError              a 5xx no kind declares: a server bug; the server log has details
    │   └── JobFailed                the job ended failed: .job, .problem
    ├── TransportError               no answer after all retries (wraps httpx's error)
    └── JobTimeout                   the job did not finish in the time given (also a TimeoutError)

The names the SDK used before (``BadRequest``, ``NotFound``, ``Conflict``, ``PayloadTooLargeError``,
``UnsupportedMediaError``, ``ServiceUnavailable``, ``Unauthorized``) still resolve, with a
DeprecationWarning. Each message is the server's own ``detail`` line, so ``str(exc)`` says what was wrong.
"""

from __future__ import annotations

import warnings
from typing import Any

from cpcnn import errors
from cpcnn.errors import CpcnnError
from cpcnn.schemas import JobPublic, PlatePublic, Problem


class ApiError(CpcnnError):
    """The server answered ``status_code`` with a problem body."""

    def __init__(self, message: str, *, status_code: int, problem: Problem | None = None) -> None:
        Exception.__init__(self, message)
        self.status_code = status_code
        self.problem = problem


class InputError(ApiError, errors.InputError):
    """The request or its data is wrong; also any 4xx that no kind in ``cpcnn.errors`` declares."""


class RequestError(InputError, errors.RequestError):
    """The request is malformed (e.g. a Host header the server does not serve)."""


class MethodNotAllowed(RequestError, errors.MethodNotAllowed):
    """The path does not take this method."""


class NotAcceptable(RequestError, errors.NotAcceptable):
    """The server has the answer in no format asked for."""


class RequestTimeout(RequestError, errors.RequestTimeout):
    """The request was sent too slowly."""


class PayloadTooLarge(InputError, errors.PayloadTooLarge):
    """An upload, image or cell count is over the server's limit."""


class UnsupportedMedia(InputError, errors.UnsupportedMedia):
    """Bytes the server cannot decode."""


class UnauthorizedError(ApiError, errors.UnauthorizedError):
    """Missing or wrong API key (also a 403 from a proxy in front)."""


class NotFoundError(ApiError, errors.NotFoundError):
    """No such job, model, table, transform or library."""


class ConflictError(ApiError, errors.ConflictError):
    """The job is not in a state that allows this (e.g. still running)."""


class UnavailableError(ApiError, errors.UnavailableError):
    """Still unavailable after every retry: queue full or Redis down; ``retry_after_s`` says when to try again."""

    def __init__(self, message: str, *, status_code: int, problem: Problem | None = None, retry_after_s: int = 5) -> None:
        super().__init__(message, status_code=status_code, problem=problem)
        self.retry_after_s = retry_after_s


class ServerError(ApiError):
    """Any 5xx without its own class: a server bug; the server log has the details."""


class JobFailed(ApiError):
    """The job finished as failed; ``problem`` is why."""

    def __init__(self, job: JobPublic) -> None:
        problem = job.error
        detail = problem.detail if problem else "unknown error"
        super().__init__(f"job {job.id} failed: {detail}", status_code=problem.status if problem else 500, problem=problem)
        self.job = job
        self.job_id = job.id


class PlateFailed(ApiError):
    """The plate finished with no site profiled, or was cancelled while waited for; ``plate`` says why."""

    def __init__(self, plate: PlatePublic) -> None:
        reasons = "; ".join(f"{f.site}: {f.reason}" for f in plate.failures[:3])
        super().__init__(f"plate {plate.id} {plate.status.value}" + (f": {reasons}" if reasons else ""),
                         status_code=409)
        self.plate = plate
        self.plate_id = plate.id


class TransportError(CpcnnError):
    """The server could not be reached (or stopped answering) after every retry."""


class JobTimeout(CpcnnError, TimeoutError):
    """A job did not finish within the caller's timeout; it may still finish later."""

    def __init__(self, message: str, *, job_id: str) -> None:
        super().__init__(message)
        self.job_id = job_id


def _mirrored(cls: type[ApiError]) -> type[CpcnnError]:
    """The ``cpcnn.errors`` class an SDK class stands for: the first declaring one in its MRO."""
    return next(k for k in cls.__mro__ if k.__module__ == errors.__name__ and "http_status" in vars(k))


#: Domain class -> the SDK class that is both an ApiError and an instance of it.
_MIRRORS: dict[type[CpcnnError], type[ApiError]] = {
    _mirrored(cls): cls
    for cls in (InputError, RequestError, MethodNotAllowed, NotAcceptable, RequestTimeout, PayloadTooLarge,
                UnsupportedMedia, UnauthorizedError, NotFoundError, ConflictError, UnavailableError)
}


def _class_for(status_code: int, code: str | None) -> type[ApiError]:
    """The SDK class for a problem: the mirror of the domain class declared for its code or status."""
    if status_code == 403:  # a proxy's or gateway's refusal: the key is the thing to check
        status_code = errors.UnauthorizedError.http_status
    domain = errors.for_status(status_code, code)
    if domain in _MIRRORS:
        return _MIRRORS[domain]
    return ServerError if status_code >= 500 else InputError


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
    cls = _class_for(status_code, problem.code if problem else None)
    if issubclass(cls, UnavailableError):
        seconds = int(retry_after) if retry_after and retry_after.isdigit() else 5
        return cls(message, status_code=status_code, problem=problem, retry_after_s=seconds)
    return cls(message, status_code=status_code, problem=problem)


#: Names the SDK used before it shared the domain's: old name -> current class.
DEPRECATED_NAMES: dict[str, type[ApiError]] = {
    "BadRequest": InputError,
    "PayloadTooLargeError": PayloadTooLarge,
    "UnsupportedMediaError": UnsupportedMedia,
    "Unauthorized": UnauthorizedError,
    "NotFound": NotFoundError,
    "Conflict": ConflictError,
    "ServiceUnavailable": UnavailableError,
}


def deprecated_name(module: str, name: str) -> type[ApiError]:
    """Resolve an old SDK exception name with a DeprecationWarning (for a module's ``__getattr__``)."""
    if name not in DEPRECATED_NAMES:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    current = DEPRECATED_NAMES[name]
    warnings.warn(f"{module}.{name} is deprecated; use cpcnn.client.{current.__name__}",
                  DeprecationWarning, stacklevel=3)
    return current


def __getattr__(name: str) -> type[ApiError]:
    return deprecated_name(__name__, name)

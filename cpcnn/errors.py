"""Errors cpcnn raises on purpose, grouped by what the caller can do next.

Each class declares once how it leaves over HTTP: ``http_status``, the problem ``code`` and its
``title``. The API's problem bodies, a failed job's error and the SDK's exception classes are all
derived from these declarations (a test keeps this tree in step with them):

    CpcnnError                     500  Root of everything cpcnn raises deliberately.
    ├── InputError                 422  The caller's data is wrong: bad image, bad locations, bad table, bad parameter.
    │   ├── RequestError           400  The HTTP request itself is malformed (a header, the framing), not its data.
    │   │   ├── MethodNotAllowed   405  The path exists but not with this HTTP method.
    │   │   ├── NotAcceptable      406  The client accepts no format this answer comes in.
    │   │   └── RequestTimeout     408  The request arrived too slowly and was dropped.
    │   ├── PayloadTooLarge        413  An upload or image exceeds a configured size limit.
    │   └── UnsupportedMedia       415  The bytes are not in a format cpcnn reads.
    ├── UnauthorizedError          401  The API key is missing or wrong.
    ├── NotFoundError              404  A model, job, transform or library with that name does not exist.
    ├── ConflictError              409  The request conflicts with the current state (e.g. a name already taken).
    ├── ModelImportError           500  A weights file could not be mapped onto the network exactly.
    ├── DownloadError              500  A download failed, was interrupted beyond recovery, or failed its checksum.
    └── UnavailableError           503  A backing service (Redis, a worker) is unreachable; the request may be retried.

Every message is one line that names the problem, so a CLI can print it as is.
"""

from __future__ import annotations

from typing import Any, ClassVar


class CpcnnError(Exception):
    """Root of everything cpcnn raises deliberately."""

    #: How the error leaves over HTTP. A subclass declares its own in its class statement
    #: (``class X(Parent, http_status=..., code=..., title=...)``) or inherits its parent's.
    http_status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal error"

    def __init_subclass__(cls, *, http_status: int | None = None, code: str | None = None,
                          title: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if http_status is not None or code is not None or title is not None:
            if http_status is None or code is None or title is None:
                raise TypeError(f"{cls.__name__} declares http_status, code and title together or not at all")
            cls.http_status, cls.code, cls.title = http_status, code, title


class InputError(CpcnnError, ValueError, http_status=422, code="input_error", title="Invalid input"):
    """The caller's data is wrong: bad image, bad locations, bad table, bad parameter."""


class RequestError(InputError, http_status=400, code="bad_request", title="Bad request"):
    """The HTTP request itself is malformed (a header, the framing), not its data."""


class MethodNotAllowed(RequestError, http_status=405, code="method_not_allowed", title="Method not allowed"):
    """The path exists but not with this HTTP method."""


class NotAcceptable(RequestError, http_status=406, code="not_acceptable", title="Not acceptable"):
    """The client accepts no format this answer comes in."""


class RequestTimeout(RequestError, http_status=408, code="timeout", title="Request timeout"):
    """The request arrived too slowly and was dropped."""


class PayloadTooLarge(InputError, http_status=413, code="payload_too_large", title="Payload too large"):
    """An upload or image exceeds a configured size limit."""


class UnsupportedMedia(InputError, http_status=415, code="unsupported_media", title="Unsupported media type"):
    """The bytes are not in a format cpcnn reads."""


class UnauthorizedError(CpcnnError, http_status=401, code="unauthorized", title="Unauthorized"):
    """The API key is missing or wrong."""


class NotFoundError(CpcnnError, LookupError, http_status=404, code="not_found", title="Not found"):
    """A model, job, transform or library with that name does not exist."""


class ConflictError(CpcnnError, http_status=409, code="conflict", title="Conflict"):
    """The request conflicts with the current state (e.g. a name already taken)."""


class ModelImportError(CpcnnError):
    """A weights file could not be mapped onto the network exactly."""


class DownloadError(CpcnnError):
    """A download failed, was interrupted beyond recovery, or failed its checksum."""


class UnavailableError(CpcnnError, http_status=503, code="unavailable", title="Service unavailable"):
    """A backing service (Redis, a worker) is unreachable; the request may be retried."""

    def __init__(self, message: str, *, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def _domain_classes(root: type[CpcnnError] = CpcnnError) -> list[type[CpcnnError]]:
    """``root`` and its subclasses defined here, depth first in definition order (SDK mirrors excluded)."""
    found = [root]
    for sub in root.__subclasses__():
        if sub.__module__ == __name__:
            found += _domain_classes(sub)
    return found


def declared() -> dict[int, type[CpcnnError]]:
    """HTTP status -> the one class that declares it: the error vocabulary both sides of the wire use."""
    return {cls.http_status: cls for cls in _domain_classes() if "http_status" in vars(cls)}


def for_status(status: int, code: str | None = None) -> type[CpcnnError] | None:
    """The class declared for a problem's ``code`` when its status agrees, else for the status; None if neither."""
    by_status = declared()
    by_code = {cls.code: cls for cls in by_status.values()}
    if code in by_code and by_code[code].http_status == status:
        return by_code[code]
    return by_status.get(status)


def render_tree(root: type[CpcnnError] = CpcnnError, prefix: str = "", last: bool = True) -> list[str]:
    """The class tree with each class's HTTP status and summary, as drawn in this module's docstring."""
    summary = (root.__doc__ or "").strip().splitlines()[0]
    if root is CpcnnError:
        lines = [f"{root.__name__:<30} {root.http_status}  {summary}"]
        child_prefix = ""
    else:
        branch = "└── " if last else "├── "
        label = f"{prefix}{branch}{root.__name__}"
        lines = [f"{label:<30} {root.http_status}  {summary}"]
        child_prefix = prefix + ("    " if last else "│   ")
    children = [sub for sub in root.__subclasses__() if sub.__module__ == __name__]
    for i, sub in enumerate(children):
        lines += render_tree(sub, child_prefix, i == len(children) - 1)
    return lines

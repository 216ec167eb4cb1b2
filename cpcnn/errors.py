"""Errors cpcnn raises on purpose, grouped by what the caller can do next.

    CpcnnError
    ├── InputError            fix the input and try again (HTTP 400/422)
    │   ├── PayloadTooLarge   make it smaller (HTTP 413)
    │   └── UnsupportedMedia  send another format (HTTP 415)
    ├── NotFoundError         the named thing does not exist (HTTP 404)
    ├── ConflictError         the thing exists in an incompatible state (HTTP 409)
    ├── ModelImportError      the weights file cannot be mapped onto the network
    ├── DownloadError         a download failed or did not verify
    └── UnavailableError      a backing service is down; retry later (HTTP 503)

Every message is one line that names the problem, so a CLI can print it as is.
"""

from __future__ import annotations


class CpcnnError(Exception):
    """Root of everything cpcnn raises deliberately."""


class InputError(CpcnnError, ValueError):
    """The caller's data is wrong: bad image, bad locations, bad table, bad parameter."""


class PayloadTooLarge(InputError):
    """An upload or image exceeds a configured size limit."""


class UnsupportedMedia(InputError):
    """The bytes are not in a format cpcnn reads."""


class NotFoundError(CpcnnError, LookupError):
    """A model, job, transform or library with that name does not exist."""


class ConflictError(CpcnnError):
    """The request conflicts with the current state (e.g. a name already taken)."""


class ModelImportError(CpcnnError):
    """A weights file could not be mapped onto the network exactly."""


class DownloadError(CpcnnError):
    """A download failed, was interrupted beyond recovery, or failed its checksum."""


class UnavailableError(CpcnnError):
    """A backing service (Redis, a worker) is unreachable; the request may be retried."""

    def __init__(self, message: str, *, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

"""ASGI middleware, outermost first: request counting, the Host check, the API key, the upload size limit.

The Host and key checks are plain ASGI so they answer from the request head alone: no byte of the body
is read (or parsed) for a caller without the key.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable
from typing import Any

from cpcnn.service.app.problems import http_problem, problem_response
from cpcnn.service.prometheus import ApiMetrics
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cpcnn.errors import PayloadTooLarge
from cpcnn.schemas import API_KEY_HEADER, Problem

#: Paths anyone may call (a load balancer's probes); everything else needs the key when one is set.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
#: The web console's static files: no data in them; the page sends the key with each API call.
CONSOLE_PATHS = frozenset({"/", "/ui"})
CONSOLE_PREFIX = "/ui/"
_KEY_HEADER = API_KEY_HEADER.lower().encode("latin-1")


def key_matches(expected: str | None, presented: bytes | str | None) -> bool:
    """True when no key is configured or ``presented`` equals it (constant-time compare)."""
    if expected is None:
        return True
    if presented is None:
        return False
    if isinstance(presented, str):
        presented = presented.encode("latin-1", errors="replace")
    return hmac.compare_digest(presented, expected.encode())


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of a request header (names are lower-case in ASGI)."""
    for key, value in scope.get("headers") or ():
        if key == name:
            return bytes(value)
    return None


class ApiKeyGate:
    """401 for every path but ``PUBLIC_PATHS``, the console's files (and ``/metrics`` when public) without
    the right key.

    Runs before routing and before any body byte is read; the answer closes the connection so an
    unauthenticated upload is not drained either.
    """

    def __init__(self, app: ASGIApp, *, expected: Callable[[], str | None], metrics_public: Callable[[], bool]) -> None:
        self.app = app
        self.expected = expected
        self.metrics_public = metrics_public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._public(scope["path"]):
            await self.app(scope, receive, send)
            return
        if key_matches(self.expected(), header(scope, _KEY_HEADER)):
            await self.app(scope, receive, send)
            return
        problem = http_problem(401, f"missing or wrong {API_KEY_HEADER} header", scope.get("path"))
        response = problem_response(problem, headers={"WWW-Authenticate": "ApiKey", "Connection": "close"})
        await response(scope, _no_receive, send)

    def _public(self, path: str) -> bool:
        return (path in PUBLIC_PATHS or path in CONSOLE_PATHS or path.startswith(CONSOLE_PREFIX)
                or (path == "/metrics" and self.metrics_public()))


class TrustedHosts:
    """400 unless the Host header names this server: a web page cannot reach it through DNS rebinding.

    The probes (``PUBLIC_PATHS``) answer any Host, since load balancers and orchestrators call them by
    IP address; they show details only to trusted hosts (see ``routes/health.py``).
    """

    def __init__(self, app: ASGIApp, *, allowed: Iterable[str]) -> None:
        self.app = app
        self.allowed = tuple(allowed)
        self.any = "*" in self.allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.any or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        raw = header(scope, b"host")
        host = host_name(raw.decode("latin-1")) if raw is not None else ""
        if host_allowed(host, self.allowed):
            await self.app(scope, receive, send)
            return
        shown = host[:64] or "(none)"
        problem = http_problem(400, f"Host {shown!r} is not served here; the server accepts "
                                    f"{', '.join(self.allowed)} (CPCNN_TRUSTED_HOSTS)", scope.get("path"))
        await problem_response(problem, headers={"Connection": "close"})(scope, _no_receive, send)


def host_name(value: str) -> str:
    """``Host`` header -> lower-case name without port or IPv6 brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") == 1:
        return value.partition(":")[0]
    return value


def host_allowed(host: str, allowed: Iterable[str]) -> bool:
    for pattern in allowed:
        if pattern == "*" or host == pattern:
            return True
        if pattern.startswith("*.") and host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
            return True
    return False


class BodyLimit:
    """413 as soon as a request body passes ``max_bytes``: by Content-Length, or while streaming.

    A body cut off inside the multipart parser would otherwise surface as a 400 parse error, so the
    app's response is replaced by the 413 once the limit has tripped.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: Callable[[], int]) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes()
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._reject(scope, send, int(declared), limit)
            return
        state: dict[str, Any] = {"seen": 0, "over": False, "sent": False}

        async def limited_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["seen"] += len(message.get("body", b""))
                if state["seen"] > limit:
                    state["over"] = True
                    raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
            return message

        async def guarded_send(message: Message) -> None:
            if state["over"]:
                if not state["sent"]:
                    state["sent"] = True
                    await self._reject(scope, send, state["seen"], limit)
                return
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except PayloadTooLarge:
            if not state["sent"]:
                state["sent"] = True
                await self._reject(scope, send, state["seen"], limit)

    @staticmethod
    async def _reject(scope: Scope, send: Send, size: int, limit: int) -> None:
        error = PayloadTooLarge(f"request body of {size} bytes is over the limit of {limit} bytes")
        response = problem_response(Problem.from_error(error, scope.get("path")), headers={"Connection": "close"})
        await response(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


#: Label values are bounded: anything else is counted as "other" (methods) or by class (statuses).
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
KNOWN_STATUSES = frozenset({200, 201, 202, 204, 304, 400, 401, 404, 405, 406, 408, 409, 413, 415, 422, 500, 503})


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "other"


def status_label(status: int) -> str:
    return str(status) if status in KNOWN_STATUSES else f"{status // 100}xx" if 100 <= status < 600 else "other"


class RequestMetrics:
    """Count every response by method, route template and status, each from a bounded set of values."""

    def __init__(self, app: ASGIApp, *, metrics: Callable[[], ApiMetrics | None]) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500}

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            metrics = self.metrics()
            if metrics is not None:
                metrics.requests.labels(
                    method_label(scope["method"]), route_template(scope), status_label(status["code"])
                ).inc()


def route_template(scope: Scope) -> str:
    """The matched route as declared (``/v1/jobs/{job_id}``), so label values stay few."""
    context = (scope.get("fastapi") or {}).get("effective_route_context")
    for candidate in (context, scope.get("route")):
        path = getattr(candidate, "path_format", None) or getattr(candidate, "path", None)
        if isinstance(path, str) and path:
            return path
    return "unmatched"

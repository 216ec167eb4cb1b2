"""ASGI middleware: the upload size limit (checked while bytes arrive) and request counting."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cpcnn.errors import PayloadTooLarge
from service.app.problems import problem_for_error, problem_response
from service.metrics import ApiMetrics


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
        response = problem_response(problem_for_error(error, scope.get("path")), headers={"Connection": "close"})
        await response(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


class RequestMetrics:
    """Count every response by method, route template and status."""

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
                metrics.requests.labels(scope["method"], route_template(scope), str(status["code"])).inc()


def route_template(scope: Scope) -> str:
    """The matched route as declared (``/v1/jobs/{job_id}``), so label values stay few."""
    context = (scope.get("fastapi") or {}).get("effective_route_context")
    for candidate in (context, scope.get("route")):
        path = getattr(candidate, "path_format", None) or getattr(candidate, "path", None)
        if isinstance(path, str) and path:
            return path
    return "unmatched"

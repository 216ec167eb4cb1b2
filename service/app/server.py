"""The HTTP server ``cpcnn serve`` runs: uvicorn's h11 protocol with request-head and body timeouts.

uvicorn closes idle keep-alive connections but has no limit on how long a client may take to send a
request head or the bytes of a body: a client trickling one byte every few seconds (slowloris) holds
its connection, and the memory behind it, forever. ``SlowClientGuard`` adds both limits:

- the request head must be complete within ``header_s`` of the connection opening (or of the first
  byte of the next request on a keep-alive connection); otherwise 408 and close;
- while a body is being sent, a pause longer than ``body_idle_s`` closes the connection (the app sees
  a disconnect). Time during which the app itself is not reading does not count.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from cpcnn.service.app.problems import http_problem
from cpcnn.service.config import ApiSettings
from uvicorn import Config
from uvicorn.protocols.http.h11_impl import H11Protocol

_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/problem+json\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s"
)


class SlowClientGuard(H11Protocol):
    """h11 protocol that disconnects clients which send their request head or body too slowly."""

    header_s: float = 10.0
    body_idle_s: float = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    # -- connection events -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch()

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None and self._awaiting_head():
            self._arm_head()  # first bytes of the next request on a kept-alive connection
        super().data_received(data)
        if self.conn.their_state is h11.SEND_BODY:
            self._arm_body()  # any body bytes (or the head) restart the idle clock
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head()
        self._cancel_body()
        super().connection_lost(exc)

    # -- timers ----------------------------------------------------------------------------------
    def _awaiting_head(self) -> bool:
        return self.conn.their_state is h11.IDLE and not self.transport.is_closing()

    def _watch(self) -> None:
        """Keep exactly the timers that the connection's state calls for."""
        if self.transport is None or self.transport.is_closing():
            return
        if not self._awaiting_head():
            self._cancel_head()
        elif self._head_timer is None and self.timeout_keep_alive_task is None:
            self._arm_head()  # a fresh connection; an idle kept-alive one is uvicorn's keep-alive timer's job
        if self.conn.their_state is not h11.SEND_BODY:
            self._cancel_body()
        elif self._body_timer is None:
            self._arm_body()

    def _arm_head(self) -> None:
        self._cancel_head()
        self._head_timer = self.loop.call_later(self.header_s, self._head_timed_out)

    def _arm_body(self) -> None:
        self._cancel_body()
        self._body_timer = self.loop.call_later(self.body_idle_s, self._body_timed_out)

    def _cancel_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _cancel_body(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._awaiting_head():
            return
        problem = http_problem(408, f"the request head took longer than {self.header_s:g} s; "
                                    "send the request line and headers at once")
        body = problem.model_dump_json(exclude_none=True).encode()
        self.transport.write(_TIMEOUT_RESPONSE % (len(body), body))
        self.logger.info("closed a connection from %s: no complete request head within %g s",
                         _peer(self.client), self.header_s)
        self.transport.close()

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.SEND_BODY:
            return
        if self.flow.read_paused:
            self._arm_body()  # the app is not reading: the client is not the slow one
            return
        self.logger.info("closed a connection from %s: no request body bytes for %g s",
                         _peer(self.client), self.body_idle_s)
        self.transport.close()  # connection_lost tells the app (http.disconnect)


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "an unknown peer"


def guarded_protocol(*, header_s: float, body_idle_s: float) -> type[SlowClientGuard]:
    """A ``SlowClientGuard`` subclass bound to these limits (uvicorn instantiates the class itself)."""
    return type("SlowClientGuardProtocol", (SlowClientGuard,), {"header_s": header_s, "body_idle_s": body_idle_s})


def server_config(app: Any, settings: ApiSettings, **overrides: Any) -> Config:
    """The uvicorn configuration ``cpcnn serve`` runs: our protocol, the configured timeouts, no proxy trust."""
    timeouts = settings.http
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "http": guarded_protocol(header_s=timeouts.header_s, body_idle_s=timeouts.body_idle_s),
        "timeout_keep_alive": timeouts.keep_alive_s,
        "proxy_headers": False,  # X-Forwarded-* would let any client choose its logged address
        "server_header": False,
        "log_level": "info",
    } | overrides
    return Config(app, **options)

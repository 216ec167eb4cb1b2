"""Slow clients are disconnected: request heads must arrive within ``header_s``, bodies may not stall.

The server under test is ``cpcnn serve`` itself (uvicorn with our protocol) with 2 s limits; before
these limits existed such connections stayed open indefinitely (past 75 s in the audit).
"""

from __future__ import annotations

import json
import time

import httpx
from _http_fixtures import (  # noqa: F401 - served_fixture registers the fixture
    API_KEY,
    BODY_IDLE_S,
    HEADER_S,
    RSS_BUDGET_BYTES,
    Served,
    closed_within,
    raw_connection,
    read_response,
    served_fixture,
)

HEAD = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: " + API_KEY.encode() + b"\r\n"
#: Generous slack over the limit for a loaded 2-core machine.
SLACK_S = 3.0


def test_trickled_request_head_is_cut_off(served: Served) -> None:
    with raw_connection(served.port) as sock:
        taken = closed_within(sock, HEADER_S + SLACK_S + 5, trickle=b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 1000)
    assert taken is not None, "a trickled request head kept its connection open"
    assert HEADER_S - 0.5 <= taken <= HEADER_S + SLACK_S, taken


def test_silent_connection_is_closed(served: Served) -> None:
    with raw_connection(served.port) as sock:
        taken = closed_within(sock, HEADER_S + SLACK_S + 5)
    assert taken is not None and taken <= HEADER_S + SLACK_S, taken


def test_408_problem_is_sent_before_closing(served: Served) -> None:
    with raw_connection(served.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        status, head, body = read_response(sock, timeout=HEADER_S + SLACK_S)
    assert status == 408, head
    assert b"application/problem+json" in head and b"connection: close" in head.lower()
    assert json.loads(body)["status"] == 408


def test_stalled_body_is_cut_off_but_a_slow_steady_one_is_served(served: Served) -> None:
    """An authenticated upload that stops sending is disconnected after ``body_idle_s``; pauses shorter
    than that are fine, even when the whole body takes longer."""
    body = b'{"table_id": "0123456789abcdef0123456789abcdef", "controls": "Metadata_x=1", "lambda": 0.01}'
    with raw_connection(served.port) as sock:
        sock.sendall(HEAD.replace(b"GET /v1/models", b"POST /v1/transforms")
                     + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
        start = time.monotonic()
        for index in range(0, len(body), 12):
            sock.sendall(body[index:index + 12])
            time.sleep(BODY_IDLE_S / 3)
        status, head, _ = read_response(sock)
    assert time.monotonic() - start > BODY_IDLE_S * 1.5
    assert status == 404, head  # the table does not exist: the whole body was read
    with raw_connection(served.port) as sock:
        sock.sendall(b"POST /v1/transforms HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: " + API_KEY.encode()
                     + b"\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"table_id\":")
        taken = closed_within(sock, BODY_IDLE_S + SLACK_S + 5)
    assert taken is not None, "a stalled request body kept its connection open"
    assert taken <= BODY_IDLE_S + SLACK_S, taken


def test_kept_alive_connection_serves_more_requests_then_times_out(served: Served) -> None:
    with raw_connection(served.port) as sock:
        for _ in range(3):
            sock.sendall(HEAD + b"\r\n")
            status, head, _ = read_response(sock)
            assert status == 200, head
            time.sleep(HEADER_S * 0.75)  # each request starts its own head clock
        # the next request's head, trickled, is cut off too
        taken = closed_within(sock, HEADER_S + SLACK_S + 10, trickle=b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 1000)
    assert taken is not None and taken <= HEADER_S + SLACK_S + 5, taken


def test_many_slow_clients_do_not_hold_the_server(served: Served) -> None:
    """50 trickling connections are all closed, and a normal request is served meanwhile."""
    idle = served.reset_peak()
    sockets = [raw_connection(served.port) for _ in range(50)]
    try:
        for sock in sockets:
            sock.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        with httpx.Client(base_url=served.url, headers={"X-API-Key": API_KEY}, timeout=10) as client:
            assert client.get("/v1/models").status_code == 200
        time.sleep(HEADER_S + SLACK_S)
        for sock in sockets:
            sock.settimeout(2)
            data = sock.recv(65536)
            assert data.startswith(b"HTTP/1.1 408 ") or data == b""
            assert sock.recv(65536) == b""
    finally:
        for sock in sockets:
            sock.close()
    assert served.peak() - idle < RSS_BUDGET_BYTES

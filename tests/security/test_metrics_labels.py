"""Prometheus label values come from small fixed sets, whatever methods, paths and statuses clients send."""

from __future__ import annotations

import re
import secrets
import string

import pytest
from _http_fixtures import RSS_BUDGET_BYTES, Served, served_fixture  # noqa: F401

#: HTTP methods that are counted under their own name.
STANDARD_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}

_SERIES = re.compile(r'^cpcnn_http_requests_total\{method="([^"]*)",route="([^"]*)",status="([^"]*)"\}', re.M)


def _invented_method(index: int) -> str:
    return "X" + "".join(secrets.choice(string.ascii_uppercase) for _ in range(12)) + str(index)


@pytest.mark.slow
def test_invented_methods_paths_and_statuses_stay_bounded(served: Served) -> None:
    idle = served.reset_peak()
    with served.client(key=False) as anonymous, served.client() as client:
        for index in range(2000):
            anonymous.request(_invented_method(index), f"/v1/{secrets.token_hex(8)}")
        for index in range(200):
            client.request(_invented_method(index), f"/v1/jobs/{secrets.token_hex(16)}")
            client.get(f"/no/such/{secrets.token_hex(8)}")
        text = client.get("/metrics").text
    series = _SERIES.findall(text)
    assert series, text[:2000]
    methods = {method for method, _, _ in series}
    routes = {route for _, route, _ in series}
    statuses = {status for _, _, status in series}
    assert methods <= STANDARD_METHODS | {"other"} and "other" in methods
    assert all(route == "unmatched" or route.startswith(("/v1/", "/metrics", "/healthz", "/readyz", "/docs",
                                                         "/redoc", "/openapi.json")) for route in routes), routes
    assert not any(re.search(r"[0-9a-f]{16}", route) for route in routes), routes
    assert statuses <= {"200", "401", "404", "405", "422", "4xx"}, statuses
    assert len(series) < 30 and len(text) < 64 * 1024, (len(series), len(text))
    grown = served.peak() - idle
    assert grown < RSS_BUDGET_BYTES, f"peak memory grew by {grown / 2**20:.0f} MB"


def test_label_functions() -> None:
    from cpcnn.service.app.middleware import KNOWN_METHODS, method_label, status_label

    assert KNOWN_METHODS == STANDARD_METHODS
    assert method_label("GET") == "GET" and method_label("get") == "other" and method_label("BREW") == "other"
    assert status_label(200) == "200" and status_label(418) == "4xx" and status_label(599) == "5xx"
    assert status_label(99) == "other" and status_label(1000) == "other"

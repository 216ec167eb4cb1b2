"""Assertions shared by the job-queue, storage and profile-input security tests."""

from __future__ import annotations

from typing import Any

import httpx


def problem(response: httpx.Response, status: int, code: str, *words: str) -> dict[str, Any]:
    """Assert an application/problem+json answer with this status and code whose detail names ``words``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["code"] == code, body
    for word in words:
        assert word in body["detail"], body["detail"]
    return body

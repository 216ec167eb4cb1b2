"""SDK behaviour against httpx.MockTransport: retries, backoff, typed errors, long polling."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from cpcnn.client import (
    BadRequest,
    Client,
    Conflict,
    JobFailed,
    NotFound,
    PayloadTooLargeError,
    RetryPolicy,
    ServiceUnavailable,
    TransportError,
    Unauthorized,
)
from cpcnn.errors import InputError, NotFoundError, UnavailableError

FAST = RetryPolicy(attempts=4, backoff_s=0.001, max_backoff_s=0.01)
IMAGES = {name: np.zeros((8, 8), np.uint16) for name in ("dna", "RNA", "ER", "AGP", "Mito")}


def _job(status: str = "succeeded", **extra: Any) -> dict[str, Any]:
    return {
        "id": "a" * 32, "status": status, "model": "cnn1", "normalization": "minmax", "metadata": {},
        "image": {"width": 8, "height": 8, "channels": ["DNA", "RNA", "ER", "AGP", "Mito"]},
        "created_at": datetime.now(UTC).isoformat(), "links": {"self": "/v1/jobs/x", "result": "/v1/jobs/x/result"},
        **extra,
    }


def _problem(status: int, detail: str, code: str = "x") -> httpx.Response:
    body = {"type": "about:blank", "title": "t", "status": status, "detail": detail, "code": code}
    return httpx.Response(status, json=body, headers={"content-type": "application/problem+json"})


def _client(handler: Any, **kwargs: Any) -> Client:
    return Client("http://cpcnn.test", transport=httpx.MockTransport(handler), retry=FAST, **kwargs)


def test_retries_503_then_succeeds_and_honours_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[httpx.Request] = []
    sleeps: list[float] = []
    monkeypatch.setattr("cpcnn.client._sync.time.sleep", sleeps.append)

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) < 3:
            response = _problem(503, "queue is full")
            response.headers["Retry-After"] = "2"
            return response
        return httpx.Response(202, json=_job("queued"))

    transport = httpx.MockTransport(handler)
    with Client("http://cpcnn.test", transport=transport, retry=RetryPolicy(attempts=3)) as client:
        job = client.submit(IMAGES, np.array([[4.0, 4.0]]))
    assert job.status == "queued" and len(calls) == 3 and sleeps == [2.0, 2.0]
    body = calls[-1].content
    assert b'name="DNA"' in body and b'name="locations"' in body and b"4.0,4.0" in body


def test_gives_up_after_attempts_with_server_message() -> None:
    with _client(lambda r: _problem(503, "Redis is down")) as client, pytest.raises(ServiceUnavailable) as info:
        client.models()
    assert str(info.value) == "Redis is down" and info.value.status_code == 503
    assert isinstance(info.value, UnavailableError)


def test_connection_errors_are_retried_then_wrapped() -> None:
    attempts = []

    def handler(request: httpx.Request) -> httpx.Response:
        attempts.append(1)
        if len(attempts) < 2:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"data": [], "count": 0})

    with _client(handler) as client:
        assert client.models() == []

    def always_down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with _client(always_down) as client, pytest.raises(TransportError, match="refused"):
        client.health()


@pytest.mark.parametrize(
    ("status", "cls", "also"),
    [(422, BadRequest, InputError), (400, BadRequest, InputError), (404, NotFound, NotFoundError),
     (409, Conflict, Conflict), (413, PayloadTooLargeError, InputError), (401, Unauthorized, Unauthorized)],
)
def test_status_maps_to_typed_error(status: int, cls: type, also: type) -> None:
    with _client(lambda r: _problem(status, f"problem {status}")) as client, pytest.raises(cls) as info:
        client.model("cnn1")
    assert isinstance(info.value, also)
    assert info.value.status_code == status and str(info.value) == f"problem {status}"
    assert info.value.problem is not None and info.value.problem.detail == f"problem {status}"


def test_non_problem_error_body() -> None:
    with _client(lambda r: httpx.Response(500, text="boom")) as client, pytest.raises(Exception, match="boom"):
        client.models()


def test_failed_job_raises_job_failed() -> None:
    error = {"title": "Invalid input", "status": 422, "detail": "no nuclei", "code": "input_error"}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=_job("failed", error=error))

    with _client(handler) as client, pytest.raises(JobFailed, match="no nuclei") as info:
        client.embed(IMAGES, np.zeros((0, 2)))
    assert info.value.job_id == "a" * 32 and info.value.status_code == 422


def test_wait_long_polls_until_finished() -> None:
    waits: list[str] = []
    states = iter(["queued", "running", "succeeded"])

    def handler(request: httpx.Request) -> httpx.Response:
        waits.append(request.url.params["wait"])
        return httpx.Response(200, json=_job(next(states)))

    with _client(handler) as client:
        assert client.wait("a" * 32, timeout=100).status == "succeeded"
    assert len(waits) == 3 and all(float(w) > 0 for w in waits)


def test_table_result_from_a_json_answer() -> None:
    payload = {"job_id": "a" * 32, "model": "cnn1", "feature_prefix": "efficientnet",
               "metadata": {"Metadata_Plate": "P", "Metadata_Well": "W", "Metadata_Site": "1"},
               "n_cells": 2, "feature_size": 3, "locations": [[1, 2], [3, 4]], "features": [[1, 2, 3], [4, 5, 6]]}

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["accept"] == "application/vnd.apache.parquet"
        return httpx.Response(200, content=json.dumps(payload), headers={"content-type": "application/json"})

    with _client(handler) as client:
        columns = client.result("a" * 32)
    assert isinstance(columns, pd.DataFrame)
    assert list(columns)[:7] == ["Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_Model",
                                 "Metadata_ObjectNumber", "Metadata_Nuclei_Location_Center_X",
                                 "Metadata_Nuclei_Location_Center_Y"]
    assert list(columns)[7:] == ["efficientnet_0", "efficientnet_1", "efficientnet_2"]
    np.testing.assert_array_equal(columns["Metadata_Site"], [1, 1])  # an integer site, as in the Parquet result
    np.testing.assert_array_equal(columns["Metadata_ObjectNumber"], [1, 2])  # an old server: by position
    np.testing.assert_array_equal(columns["efficientnet_2"], np.array([3, 6], np.float32))
    payload["object_numbers"] = [7, 3]
    with _client(handler) as client:
        columns = client.result("a" * 32)
    np.testing.assert_array_equal(columns["Metadata_ObjectNumber"], [7, 3])


def test_api_key_header_and_input_validation() -> None:
    seen: dict[str, str] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.update(request.headers)
        return httpx.Response(200, json={"data": [], "count": 0})

    with _client(handler, api_key="secret-key-123456") as client:
        client.models()
        assert seen["x-api-key"] == "secret-key-123456"
        with pytest.raises(InputError, match="unknown channel"):
            client.submit({"DAPI": b"x"}, np.zeros((0, 2)))
        with pytest.raises(InputError, match="channel_order"):
            client.submit(np.zeros((5, 8, 8), np.uint16), np.zeros((0, 2)))
        with pytest.raises(InputError, match="metadata"):
            client.submit(IMAGES, np.zeros((0, 2)), metadata={"Plate_Name": "x"})


def test_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(attempts=10, backoff_s=1.0, max_backoff_s=5.0)
    delays = [policy.delay(n) for n in range(1, 8)]
    assert delays[0] <= 1.0 and max(delays) <= 5.0 and delays[4] >= 2.5
    assert policy.delay(1, "3") == 3.0 and policy.delay(1, "100") == 5.0

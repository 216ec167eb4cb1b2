"""SDK behaviour against httpx.MockTransport: retries, backoff, typed errors, long polling."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

import cpcnn.client as client_module
from cpcnn import errors
from cpcnn.client import (
    ApiError,
    Client,
    ConflictError,
    InputError,
    JobFailed,
    NotFoundError,
    PayloadTooLarge,
    RequestError,
    RetryPolicy,
    ServerError,
    TransportError,
    UnauthorizedError,
    UnavailableError,
)
from cpcnn.client._errors import error_from_response

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
    with _client(lambda r: _problem(503, "Redis is down")) as client, pytest.raises(UnavailableError) as info:
        client.models()
    assert str(info.value) == "Redis is down" and info.value.status_code == 503
    assert isinstance(info.value, errors.UnavailableError)


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
    [(422, InputError, errors.InputError), (400, RequestError, errors.InputError),
     (404, NotFoundError, errors.NotFoundError), (409, ConflictError, errors.ConflictError),
     (413, PayloadTooLarge, errors.InputError), (401, UnauthorizedError, errors.UnauthorizedError)],
)
def test_status_maps_to_typed_error(status: int, cls: type, also: type) -> None:
    with _client(lambda r: _problem(status, f"problem {status}")) as client, pytest.raises(cls) as info:
        client.model("cnn1")
    assert isinstance(info.value, also)
    assert info.value.status_code == status and str(info.value) == f"problem {status}"
    assert info.value.problem is not None and info.value.problem.detail == f"problem {status}"


@pytest.mark.parametrize("kind", [k for k in errors.declared().values() if k is not errors.CpcnnError])
def test_every_declared_error_has_its_sdk_class(kind: type[errors.CpcnnError]) -> None:
    """An answer is both an ApiError and the domain class declared for it, under the domain's name."""
    error = error_from_response(kind.http_status, {"title": kind.title, "detail": "d", "code": kind.code})
    assert isinstance(error, ApiError) and isinstance(error, kind) and type(error).__name__ == kind.__name__
    assert error.status_code == kind.http_status


def test_unknown_statuses_fall_back_by_class() -> None:
    assert type(error_from_response(418, {"detail": "teapot"})) is InputError
    assert type(error_from_response(502, "bad gateway")) is ServerError
    assert type(error_from_response(403, {"detail": "forbidden"})) is UnauthorizedError


@pytest.mark.parametrize(
    ("old", "new"),
    [("BadRequest", InputError), ("NotFound", NotFoundError), ("Conflict", ConflictError),
     ("PayloadTooLargeError", PayloadTooLarge), ("UnsupportedMediaError", client_module.UnsupportedMedia),
     ("ServiceUnavailable", UnavailableError), ("Unauthorized", UnauthorizedError)],
)
def test_former_names_still_resolve_with_a_warning(old: str, new: type) -> None:
    with pytest.warns(DeprecationWarning, match=f"cpcnn.client.{old} is deprecated; use cpcnn.client.{new.__name__}"):
        assert getattr(client_module, old) is new
    with pytest.raises(AttributeError):
        client_module.NoSuchError  # noqa: B018


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
        with pytest.raises(errors.InputError, match="unknown channel"):
            client.submit({"DAPI": b"x"}, np.zeros((0, 2)))
        with pytest.raises(errors.InputError, match="channel_order"):
            client.submit(np.zeros((5, 8, 8), np.uint16), np.zeros((0, 2)))
        with pytest.raises(errors.InputError, match="metadata"):
            client.submit(IMAGES, np.zeros((0, 2)), metadata={"Plate_Name": "x"})


def test_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(attempts=10, backoff_s=1.0, max_backoff_s=5.0)
    delays = [policy.delay(n) for n in range(1, 8)]
    assert delays[0] <= 1.0 and max(delays) <= 5.0 and delays[4] >= 2.5
    assert policy.delay(1, "3") == 3.0 and policy.delay(1, "100") == 5.0

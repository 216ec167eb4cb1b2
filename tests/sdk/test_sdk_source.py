"""One SDK source: ``_sync.py`` is generated from ``_async.py``, and both clients behave alike where the
concurrency differs (``embed_many``'s ``max_in_flight``) and where timeouts come from the client."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from cpcnn.client import AsyncClient, Client, JobFailed, JobTimeout, RetryPolicy, Site
from cpcnn.errors import InputError

REPO = Path(__file__).resolve().parents[2]
FAST = RetryPolicy(attempts=2, backoff_s=0.001, max_backoff_s=0.01)
IMAGES = {name: np.zeros((8, 8), np.uint16) for name in ("DNA", "RNA", "ER", "AGP", "Mito")}
N_SITES, LIMIT = 6, 2


def test_committed_sync_client_is_generated_from_the_async_one() -> None:
    result = subprocess.run([sys.executable, "scripts/unasync.py", "--check"], cwd=REPO, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr + "\nregenerate with: python scripts/unasync.py"


def test_unasync_rewrites_tokens_and_refuses_leftovers() -> None:
    spec = importlib.util.spec_from_file_location("unasync_script", REPO / "scripts" / "unasync.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    source = '"""Doc."""\nasync def f(c: AsyncClient) -> None:\n    async with c:\n        await async_sleep(1)\n'
    assert script.unasync(source) == script.HEADER + "def f(c: Client) -> None:\n    with c:\n        sleep(1)\n"
    with pytest.raises(ValueError, match="AsyncNewThing"):
        script.unasync('"""Doc."""\nx = AsyncNewThing()\n')


def _job(job_id: str, status: str) -> dict[str, Any]:
    return {
        "id": job_id, "status": status, "model": "cnn1", "normalization": "minmax", "metadata": {},
        "image": {"width": 8, "height": 8, "channels": ["DNA", "RNA", "ER", "AGP", "Mito"]},
        "created_at": datetime.now(UTC).isoformat(), "links": {"self": "/v1/jobs/x", "result": "/v1/jobs/x/result"},
    }


class SlowFirstSite:
    """A fake server whose first site's job finishes only after every other site's job did (or after
    ``patience`` seconds), recording how many jobs are submitted but not yet finished."""

    def __init__(self, patience: float = 3.0) -> None:
        self.lock = threading.Lock()
        self.finished: set[str] = set()
        self.submitted: set[str] = set()
        self.peak = 0
        self.first_outlasted_the_rest = False
        self.deadline = time.monotonic() + patience

    def respond(self, request: httpx.Request) -> tuple[httpx.Response, float]:
        """The answer, and how long to hold it (a long poll on the slow job)."""
        path = request.url.path
        if request.method == "POST":
            site = int(re.search(rb'name="site"\r\n\r\n(\d+)', request.content).group(1))  # type: ignore[union-attr]
            job_id = f"{site:032x}"
            with self.lock:
                self.submitted.add(job_id)
                self.peak = max(self.peak, len(self.submitted - self.finished))
            return httpx.Response(202, json=_job(job_id, "queued")), 0.0
        job_id = path.split("/")[3]
        if path.endswith("/result"):
            result = {"job_id": job_id, "model": "cnn1", "feature_prefix": "f", "n_cells": 1, "feature_size": 2,
                      "metadata": {"Metadata_Site": str(int(job_id, 16))}, "locations": [[1, 2]],
                      "features": [[float(int(job_id, 16)), 0.0]]}
            return httpx.Response(200, content=json.dumps(result), headers={"content-type": "application/json"}), 0.0
        with self.lock:
            others_done = len(self.finished) == N_SITES - 1
            if int(job_id, 16) != 0 or others_done or time.monotonic() > self.deadline:
                self.first_outlasted_the_rest |= int(job_id, 16) == 0 and others_done
                self.finished.add(job_id)
                return httpx.Response(200, json=_job(job_id, "succeeded")), 0.0
        return httpx.Response(200, json=_job(job_id, "running")), 0.01

    def check(self, table: pd.DataFrame) -> None:
        assert table["Metadata_Site"].tolist() == list(range(N_SITES))  # rows in site order
        assert self.peak == LIMIT  # never more than max_in_flight jobs unfinished, and the slots were used
        assert self.first_outlasted_the_rest  # a slow job holds one slot, not the whole batch


SITES = [Site(IMAGES, np.array([[4.0, 4.0]]), {"site": str(i)}) for i in range(N_SITES)]


def test_max_in_flight_counts_unfinished_jobs_in_the_blocking_client() -> None:
    server = SlowFirstSite()

    def handler(request: httpx.Request) -> httpx.Response:
        response, hold = server.respond(request)
        time.sleep(hold)
        return response

    with Client("http://cpcnn.test", transport=httpx.MockTransport(handler), retry=FAST) as client:
        table = client.embed_many(SITES, max_in_flight=LIMIT, progress=False)
    server.check(table)


def test_max_in_flight_counts_unfinished_jobs_in_the_async_client() -> None:
    server = SlowFirstSite()

    async def handler(request: httpx.Request) -> httpx.Response:
        response, hold = server.respond(request)
        await asyncio.sleep(hold)
        return response

    async def run() -> pd.DataFrame:
        async with AsyncClient("http://cpcnn.test", transport=httpx.MockTransport(handler), retry=FAST) as client:
            return await client.embed_many(SITES, max_in_flight=LIMIT, progress=False)

    server.check(asyncio.run(run()))


def _fail_second_site(submitted: list[int]) -> Any:
    """A handler whose second site's job fails; records the sites submitted."""

    def respond(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            site = int(re.search(rb'name="site"\r\n\r\n(\d+)', request.content).group(1))  # type: ignore[union-attr]
            submitted.append(site)
            if site == 1:
                error = {"title": "Invalid input", "status": 422, "detail": "no nuclei", "code": "input_error"}
                return httpx.Response(200, json={**_job(f"{site:032x}", "failed"), "error": error})
            return httpx.Response(200, json=_job(f"{site:032x}", "succeeded"))
        result = {"job_id": "0" * 32, "model": "cnn1", "feature_prefix": "f", "n_cells": 1, "feature_size": 1,
                  "metadata": {}, "locations": [[1, 2]], "features": [[0.0]]}
        return httpx.Response(200, content=json.dumps(result), headers={"content-type": "application/json"})

    return respond


def test_first_failure_stops_the_sites_not_yet_started() -> None:
    blocking: list[int] = []
    with Client("http://cpcnn.test", transport=httpx.MockTransport(_fail_second_site(blocking))) as client:
        with pytest.raises(JobFailed, match="no nuclei"):
            client.embed_many(SITES, max_in_flight=1, progress=False)

    concurrent: list[int] = []
    respond = _fail_second_site(concurrent)

    async def handler(request: httpx.Request) -> httpx.Response:
        return respond(request)

    async def run() -> None:
        async with AsyncClient("http://cpcnn.test", transport=httpx.MockTransport(handler)) as client:
            await client.embed_many(SITES, max_in_flight=1, progress=False)

    with pytest.raises(JobFailed, match="no nuclei"):
        asyncio.run(run())
    assert blocking == concurrent == [0, 1]


@pytest.mark.parametrize("limit", [0, -1, 1.5, True])
def test_max_in_flight_must_be_a_positive_integer(limit: Any) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing may be sent")

    with Client("http://cpcnn.test", transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(InputError, match="max_in_flight"):
            client.embed_many(SITES, max_in_flight=limit, progress=False)


def test_timeouts_come_from_the_client() -> None:
    seen: list[tuple[str | None, dict[str, Any]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.params.get("wait"), request.extensions["timeout"]))
        return httpx.Response(200, json=_job("a" * 32, "running"))

    with Client("http://cpcnn.test", transport=httpx.MockTransport(handler), timeout=5, job_timeout=0.05) as client:
        with pytest.raises(JobTimeout, match="after 0.05 s"):
            client.wait("a" * 32)
        client.job("a" * 32)
        client.job("a" * 32, wait=20)
    wait, timeout = seen[-3]
    assert float(wait or 0) <= 0.05 and timeout["read"] == pytest.approx(5 + float(wait or 0))
    assert seen[-2] == ("0.0", {"connect": 5, "read": 5, "write": 5, "pool": 5})
    assert seen[-1] == ("20", {"connect": 5, "read": 25, "write": 5, "pool": 5})  # a long poll gets its wait on top

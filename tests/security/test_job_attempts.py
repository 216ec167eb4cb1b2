"""A job that kills the process running it is run at most ``1 + retries`` times, in both queue modes.

Real processes and real SIGKILLs: ``cpcnn serve`` (embedded queue) restarted after each kill, and
``cpcnn worker`` processes on a private redis-server. The attempts are counted before the job runs
(``state.json`` in embedded mode, a Redis counter in RQ mode), so a kill mid-job still counts.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from _servers import RedisServer, cpcnn_process, free_port, live_server, stop_process, wait_http, wait_until
from _tiny_model import locations_csv, save_slow_model, synthetic_site, tiff_bytes
from cpcnn.service.app.main import create_app
from cpcnn.service.config import ApiSettings, WorkerTuning
from cpcnn.service.job_store import JobStore
from cpcnn.service.queue import TASK_PATH
from cpcnn.service.redis_queue import attempts_key
from rq import Queue
from rq.serializers import JSONSerializer

from cpcnn._types import CHANNELS

pytestmark = pytest.mark.slow

GAVE_UP = "gave up after 3 attempts: the worker process died while running it"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, Any]]:
    save_slow_model(tmp_path / "home" / "models", "slow", width=96)
    processes: list[Any] = []
    yield {"tmp": tmp_path, "processes": processes, "jobs": JobStore(tmp_path / "data"),
           "env": {"CPCNN_HOME": str(tmp_path / "home"), "CPCNN_DATA_DIR": str(tmp_path / "data"),
                   "CPCNN_ENV": "dev", "CPCNN_QUEUE__RETRIES": "2"}}
    for process in processes:
        stop_process(process, sig=signal.SIGKILL)


def _files(n_cells: int = 48) -> dict[str, Any]:
    planes, centers = synthetic_site(size=256, n_cells=n_cells, seed=7)
    files: dict[str, Any] = {c: (f"{c}.tif", tiff_bytes(planes[c]), "image/tiff") for c in CHANNELS}
    files["locations"] = ("n.csv", locations_csv(centers), "text/csv")
    return files


def _kill_when_running(env: dict[str, Any], process: Any, job_id: str, attempt: int) -> None:
    """SIGKILL the process while it runs the job's ``attempt``-th start."""
    jobs: JobStore = env["jobs"]
    wait_until(lambda: jobs.state(job_id).status == "running" and jobs.state(job_id).attempts == attempt,
               timeout=90, interval=0.01, what=f"attempt {attempt} to run")
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    assert jobs.state(job_id).status == "running"  # it died holding the job


def test_embedded_queue_gives_up_on_a_job_that_kills_the_process(env: dict[str, Any]) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    job_id = ""
    for attempt in (1, 2, 3, 4):
        serve = cpcnn_process(["serve", "--port", str(port), "--model", "slow", "--device", "cpu", "--threads", "1",
                               "--slots", "1"], env=env["env"], log=env["tmp"] / f"serve-{attempt}.log")
        env["processes"].append(serve)
        wait_http(f"{url}/healthz", timeout=60)
        if attempt == 1:
            response = httpx.post(f"{url}/v1/jobs", files=_files(), data={"plate": "killer"}, timeout=30)
            assert response.status_code == 202, response.text
            job_id = response.json()["id"]
        if attempt < 4:
            _kill_when_running(env, serve, job_id, attempt)
    job = httpx.get(f"{url}/v1/jobs/{job_id}", params={"wait": 60}, timeout=90).json()
    assert job["status"] == "failed", job
    assert job["attempts"] == 3
    assert job["error"]["code"] == "worker_lost" and job["error"]["detail"] == GAVE_UP
    state = env["jobs"].state(job_id)
    assert state.attempts == 3 and state.completions == 0


def _worker(env: dict[str, Any], name: str) -> Any:
    args = ["-v", "worker", "--name", name, "--model", "slow", "--device", "cpu", "--threads", "1",
            "--heartbeat-s", "1", "--slots", "1", "--maintenance-s", "1"]
    process = cpcnn_process(args, env=env["env"], log=env["tmp"] / f"{name}.log")
    env["processes"].append(process)
    return process


def test_redis_queue_gives_up_on_a_job_that_kills_its_workers(env: dict[str, Any]) -> None:
    redis_server = RedisServer(env["tmp"] / "redis")
    redis_server.start()
    try:
        env["env"]["CPCNN_REDIS_URL"] = redis_server.url
        settings = ApiSettings(env="dev", redis_url=redis_server.url, data_dir=env["tmp"] / "data",
                               models_dir=env["tmp"] / "home" / "models", default_model="slow",
                               worker=WorkerTuning(heartbeat_s=1))
        connection = redis.Redis.from_url(redis_server.url)
        with live_server(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
            response = client.post("/v1/jobs", files=_files(), data={"plate": "killer"})
            assert response.status_code == 202, response.text
            job_id = response.json()["id"]
            for attempt in (1, 2, 3):
                _kill_when_running(env, _worker(env, f"victim-{attempt}"), job_id, attempt)
                assert int(connection.get(attempts_key(job_id)) or 0) == attempt
            _worker(env, "survivor")
            job = client.get(f"/v1/jobs/{job_id}", params={"wait": 90}).json()
            assert job["status"] == "failed", job
            assert job["attempts"] == 3 and job["error"]["code"] == "worker_lost"
            assert job["error"]["detail"] == GAVE_UP

            # Delivered once more behind RQ's back (an operator's requeue): counted, refused, not run.
            queue = Queue("cpcnn-embed:slow", connection=connection, serializer=JSONSerializer)
            rq_job = queue.enqueue(TASK_PATH, {"job_id": job_id}, job_id=job_id, result_ttl=60)
            wait_until(lambda: rq_job.get_status(refresh=True) == "finished", timeout=30, what="redelivery")
            assert int(connection.get(attempts_key(job_id)) or 0) == 4
            state = env["jobs"].state(job_id)
            assert state.status == "failed" and state.attempts == 3 and state.completions == 0
            assert state.error is not None and state.error.detail == GAVE_UP

            # The same upload again is a new submission: its attempts start from zero.
            again = client.post("/v1/jobs", files=_files(), data={"plate": "killer"})
            assert again.status_code == 202 and again.json()["id"] == job_id
            assert connection.get(attempts_key(job_id)) in (None, b"1")
    finally:
        redis_server.stop(kill=True)

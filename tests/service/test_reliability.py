"""Real processes: SIGKILL a worker mid-job, restart Redis mid-stream, serve + two workers end to end.

Each test runs its own redis-server (AOF, noeviction) on a spare port and real ``cpcnn`` processes.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from _servers import RedisServer, cpcnn_process, free_port, live_server, stop_process, wait_http, wait_until
from _tiny_model import locations_csv, save_slow_model, save_tiny_model, synthetic_site, tiff_bytes
from cpcnn.service.app.main import create_app
from cpcnn.service.config import ApiSettings, WorkerTuning
from cpcnn.service.job_store import JobStore

from cpcnn._types import CHANNELS
from cpcnn.client import Client, Site

pytestmark = pytest.mark.slow


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, Any]]:
    save_tiny_model(tmp_path / "home" / "models", "cnn1")
    save_slow_model(tmp_path / "home" / "models", "slow", width=96)
    redis_server = RedisServer(tmp_path / "redis")
    redis_server.start()
    processes: list[Any] = []
    yield {"tmp": tmp_path, "redis": redis_server, "processes": processes,
           "env": {"CPCNN_HOME": str(tmp_path / "home"), "CPCNN_DATA_DIR": str(tmp_path / "data"),
                   "CPCNN_REDIS_URL": redis_server.url, "CPCNN_ENV": "dev"}}
    for process in processes:
        stop_process(process, sig=signal.SIGKILL)
    redis_server.stop(kill=True)


def _worker(env: dict[str, Any], name: str, *extra: str) -> Any:
    args = ["-v", "worker", "--name", name, "--device", "cpu", "--threads", "1", "--heartbeat-s", "1", *extra]
    process = cpcnn_process(args, env=env["env"], log=env["tmp"] / f"{name}.log")
    env["processes"].append(process)
    return process


def _files(n_cells: int, seed: int) -> dict[str, Any]:
    planes, centers = synthetic_site(size=256, n_cells=n_cells, seed=seed)
    files: dict[str, Any] = {c: (f"{c}.tif", tiff_bytes(planes[c]), "image/tiff") for c in CHANNELS}
    files["locations"] = ("n.csv", locations_csv(centers), "text/csv")
    return files


def _api_settings(env: dict[str, Any], **overrides: Any) -> ApiSettings:
    values: dict[str, Any] = {
        "env": "dev", "redis_url": env["redis"].url, "data_dir": env["tmp"] / "data",
        "models_dir": env["tmp"] / "home" / "models", "worker": WorkerTuning(heartbeat_s=1),
    }
    return ApiSettings(**(values | overrides))


def test_sigkill_worker_mid_job_is_retried_elsewhere(env: dict[str, Any]) -> None:
    """Worker A is killed with SIGKILL while embedding; B requeues the abandoned job and finishes all."""
    a = _worker(env, "worker-a", "--model", "slow", "--slots", "1", "--maintenance-s", "3600")
    settings = _api_settings(env, default_model="slow")
    jobs = JobStore(settings.resolved_data_dir())
    with live_server(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, timeout=60, what="worker A ready")
        ids = [client.post("/v1/jobs", files=_files(16, seed), data={"plate": f"kill-{seed}"}).json()["id"]
               for seed in range(4)]

        def running_on_a() -> str | None:
            for job_id in ids:
                state = jobs.state(job_id)
                if state.status == "running" and state.worker == "worker-a":
                    return job_id
            return None

        wait_until(lambda: running_on_a() is not None, timeout=60, interval=0.01, what="a job running on A")
        victim = running_on_a()
        os.killpg(a.pid, signal.SIGKILL)
        a.wait(timeout=10)
        assert jobs.state(victim).status == "running"  # A died holding it

        _worker(env, "worker-b", "--model", "slow", "--slots", "2", "--maintenance-s", "1")
        for job_id in ids:
            job = client.get(f"/v1/jobs/{job_id}", params={"wait": 60}).json()
            assert job["status"] == "succeeded", job
    states = {job_id: jobs.state(job_id) for job_id in ids}
    assert all(s.completions == 1 and s.n_cells == 16 for s in states.values()), states  # none duplicated
    assert states[victim].attempts == 2 and states[victim].worker == "worker-b"
    connection = redis.Redis.from_url(env["redis"].url)
    assert connection.llen("rq:queue:cpcnn-embed:slow") == 0
    wait_until(lambda: connection.zcard("rq:wip:cpcnn-embed:slow") == 0, timeout=10, what="RQ to finish bookkeeping")
    assert connection.zcard("rq:failed:cpcnn-embed:slow") == 0


def test_redis_restart_keeps_queued_jobs_and_api_recovers(env: dict[str, Any]) -> None:
    settings = _api_settings(env)
    jobs = JobStore(settings.resolved_data_dir())
    with live_server(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
        queued = [client.post("/v1/jobs", files=_files(3, seed), data={"plate": f"r-{seed}"}) for seed in range(3)]
        assert [r.status_code for r in queued] == [202, 202, 202]
        env["redis"].stop(kill=True)  # no warning; AOF with fsync always keeps what was acknowledged

        down = client.post("/v1/jobs", files=_files(3, 10), data={"plate": "while-down"})
        assert down.status_code == 503 and "Retry-After" in down.headers, down.text
        assert client.get("/readyz").status_code == 503
        assert client.get(f"/v1/jobs/{queued[0].json()['id']}").json()["status"] == "queued"  # from disk
        assert client.get("/healthz").status_code == 200

        env["redis"].start()  # same port, same AOF: the API reconnects by itself
        wait_until(lambda: client.post("/v1/jobs", files=_files(3, 10), data={"plate": "while-down"}).status_code
                   == 202, timeout=20, what="API to reach Redis again")
        assert redis.Redis.from_url(env["redis"].url).llen("rq:queue:cpcnn-embed:cnn1") == 4

        _worker(env, "worker-r", "--maintenance-s", "1")
        for response in queued:
            job = client.get(f"/v1/jobs/{response.json()['id']}", params={"wait": 60}).json()
            assert job["status"] == "succeeded" and job["n_cells"] == 3, job
    assert len(jobs.ids()) == 4


def test_serve_and_two_workers_end_to_end(env: dict[str, Any]) -> None:
    """The compose topology, natively: redis-server, ``cpcnn serve --redis-url``, two ``cpcnn worker``s."""
    port = free_port()
    api_key = "e2e-test-key-0123456789"
    serve_env = env["env"] | {"CPCNN_API_KEY": api_key}
    serve = cpcnn_process(["serve", "--port", str(port), "--redis-url", env["redis"].url],
                          env=serve_env, log=env["tmp"] / "serve.log")
    env["processes"].append(serve)
    for name in ("e2e-1", "e2e-2"):
        _worker(env, name, "--max-wait-ms", "20", "--slots", "2")
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/healthz")
    with Client(url, api_key=api_key) as client:
        wait_until(lambda: len(client.ready().workers) == 2, timeout=60, what="two workers registered")
        sites, expected_rows = [], 0
        for seed in range(8):
            planes, centers = synthetic_site(size=256, n_cells=3 + seed % 3, seed=seed)
            sites.append(Site(planes, centers, {"plate": "e2e", "site": str(seed)}))
            expected_rows += centers.shape[0]
        cells = client.embed_many(sites, max_in_flight=8, progress=False)
        assert len(cells) == expected_rows
        assert cells["Metadata_Site"].drop_duplicates().tolist() == list(range(8))  # integer sites
        assert np.isfinite(cells.filter(like="efficientnet_").to_numpy()).all()
    jobs = JobStore(env["tmp"] / "data")
    workers = {jobs.state(job_id).worker for job_id in jobs.ids()}
    assert workers == {"e2e-1", "e2e-2"}, workers
    with httpx.Client(base_url=url) as raw:
        assert raw.get("/v1/models").status_code == 401
    stop_process(serve)
    assert serve.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after a graceful stop


def test_cpcnn_serve_embedded_process(env: dict[str, Any]) -> None:
    """``cpcnn serve`` alone (no Redis): API + in-process worker + local data directory."""
    port = free_port()
    serve_env = {k: v for k, v in env["env"].items() if k != "CPCNN_REDIS_URL"}
    serve = cpcnn_process(["serve", "--port", str(port), "--device", "cpu", "--threads", "1"], env=serve_env,
                          log=env["tmp"] / "serve-embedded.log")
    env["processes"].append(serve)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/healthz")
    planes, centers = synthetic_site(size=200, n_cells=5, seed=4)
    with Client(url) as client:
        wait_until(lambda: client.ready().ready, timeout=30, what="embedded worker ready")
        assert client.ready().queue == "embedded"
        cells = client.embed(planes, centers, metadata={"plate": "cli"})
    assert len(cells) == 5 and (cells["Metadata_Plate"] == "cli").all()
    assert JobStore(env["tmp"] / "data").ids()  # results live in the configured data directory

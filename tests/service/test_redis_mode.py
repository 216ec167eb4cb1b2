"""Redis mode in one process: RQ queue with a JSON serializer, a worker loop in a thread, a private
redis-server per module (the shared 6379 is never touched)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from _servers import RedisServer, live_server, wait_ready
from _tiny_model import upload
from cpcnn.service.app.main import create_app
from cpcnn.service.config import ApiSettings, QueueSettings, WorkerSettings, WorkerTuning
from cpcnn.service.job_store import JobStore
from cpcnn.service.worker.main import WorkerLoop
from cpcnn.service.worker.runtime import Runtime
from cpcnn.service.worker.tasks import WorkerContext, set_context


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()

@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    yield redis_server.url
    client.flushdb()
    client.close()

@pytest.fixture
def redis_settings(make_settings: Callable[..., ApiSettings], redis_url: str) -> Callable[..., ApiSettings]:
    def factory(**overrides: Any) -> ApiSettings:
        return make_settings(redis_url=redis_url, **overrides)

    return factory

class ThreadWorker:
    """A WorkerLoop in a thread of the test process (the real CLI worker is tested with processes)."""

    def __init__(self, settings: ApiSettings, name: str = "w1") -> None:
        worker_settings = WorkerSettings(
            env="dev", redis_url=settings.redis_url, data_dir=settings.data_dir, models_dir=settings.models_dir,
            name=name, worker=WorkerTuning(device="cpu", threads=1, max_wait_ms=5, slots=2, heartbeat_s=1),
        )
        jobs = JobStore(worker_settings.resolved_data_dir())
        runtime = Runtime(worker_settings.model_store(), worker_settings.worker)
        runtime.batcher("cnn1")
        self.loop = WorkerLoop(worker_settings, runtime, jobs)
        set_context(WorkerContext(jobs=jobs, runtime=runtime, name=name))
        self.thread = threading.Thread(target=self.loop.run, daemon=True)

    def __enter__(self) -> ThreadWorker:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.stop.set()
        self.thread.join(timeout=20)
        self.loop.runtime.close()
        set_context(None)

def test_embed_through_redis(redis_settings: Callable[..., ApiSettings], site: dict[str, Any]) -> None:
    settings = redis_settings()
    with live_server(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
        not_ready = client.get("/readyz")
        assert not_ready.status_code == 503 and "no worker" in not_ready.json()["reasons"][0]
        with ThreadWorker(settings):
            wait_ready(client)
            job = client.post("/v1/jobs", params={"wait": 20}, files=upload(site), data={"plate": "r1"}).json()
            assert job["status"] == "succeeded" and job["n_cells"] == 6, job
            ready = client.get("/readyz").json()
            assert ready["queue"] == "redis" and ready["workers"][0]["name"] == "w1"
            metrics = client.get("/metrics").text
            assert "cpcnn_workers 1.0" in metrics
        features = client.get(job["links"]["result"], params={"format": "npy"})
        assert features.status_code == 200

def test_redis_carries_ids_and_small_metadata(redis_settings: Callable[..., ApiSettings], site: dict[str, Any]) -> None:
    """A queued job is one small hash in Redis (the pixels stay on disk); a finished one leaves nothing."""
    settings = redis_settings()
    connection = redis.Redis.from_url(settings.redis_url or "")
    with live_server(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
        job = client.post("/v1/jobs", files=upload(site), data={"plate": "size"}).json()
        queued = [key for key in connection.scan_iter(f"*{job['id']}*")]
        assert queued == [f"rq:job:{job['id']}".encode()]
        payload = sum(len(k) + len(v) for k, v in connection.hgetall(queued[0]).items())
        # The fields Redis carries are ~0.5 KB; its own per-key bookkeeping adds ~1.5 KB in memory.
        assert payload < 1024 and int(connection.memory_usage(queued[0]) or 0) < 3072, payload
        with ThreadWorker(settings):
            assert client.get(f"/v1/jobs/{job['id']}", params={"wait": 20}).json()["status"] == "succeeded"
        assert list(connection.scan_iter(f"*{job['id']}*")) == []
    connection.close()


def test_backpressure_and_delete_queued(redis_settings: Callable[..., ApiSettings], site: dict[str, Any]) -> None:
    settings = redis_settings(queue=QueueSettings(max_depth=2, retry_after_s=3))
    with live_server(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
        first = client.post("/v1/jobs", files=upload(site), data={"plate": "1"})
        second = client.post("/v1/jobs", files=upload(site), data={"plate": "2"})
        assert first.status_code == second.status_code == 202
        full = client.post("/v1/jobs", files=upload(site), data={"plate": "3"})
        assert full.status_code == 503 and full.headers["Retry-After"] == "3"
        assert client.get("/readyz").json()["queue_depth"] == 2
        assert client.delete(f"/v1/jobs/{first.json()['id']}").status_code == 204
        assert client.post("/v1/jobs", files=upload(site), data={"plate": "3"}).status_code == 202
        assert 'cpcnn_queue_depth 2.0' in client.get("/metrics").text

def test_redis_unreachable_is_503(make_settings: Callable[..., ApiSettings], site: dict[str, Any], tmp_path: Path) -> None:
    from _servers import free_port

    settings = make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    with live_server(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
        response = client.post("/v1/jobs", files=upload(site))
        assert response.status_code == 503 and response.json()["code"] == "unavailable"
        assert "Redis" in response.json()["detail"] and int(response.headers["Retry-After"]) > 0
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["queue_reachable"] is False
        assert "cpcnn_queue_up 0.0" in client.get("/metrics").text
        assert client.get("/healthz").status_code == 200
        assert not list((tmp_path / "data" / "jobs").glob("*"))


def test_job_queued_by_the_previous_version_still_runs(
    redis_settings: Callable[..., ApiSettings], site: dict[str, Any]
) -> None:
    """Before the ``cpcnn.service`` package name, RQ stored ``service.worker.tasks.*`` paths in Redis."""
    from cpcnn.service.queue import queue_name
    from rq import Callback, Queue
    from rq.serializers import JSONSerializer

    settings = redis_settings()
    with live_server(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
        job_id = client.post("/v1/jobs", files=upload(site), data={"plate": "legacy"}).json()["id"]
        connection = redis.Redis.from_url(settings.redis_url or "")
        queue = Queue(queue_name(settings.queue.name, "cnn1"), connection=connection, serializer=JSONSerializer)
        queue.remove(job_id)
        queue.enqueue("service.worker.tasks.embed_job", {"job_id": job_id}, job_id=job_id, result_ttl=60,
                      on_failure=Callback("service.worker.tasks.on_failure"))
        stored = connection.hget(f"rq:job:{job_id}", "failure_callback_name")
        assert stored == b"service.worker.tasks.on_failure"
        with ThreadWorker(settings):
            job = client.get(f"/v1/jobs/{job_id}", params={"wait": 20}).json()
        connection.close()
        assert job["status"] == "succeeded" and job["n_cells"] == 6, job

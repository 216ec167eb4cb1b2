"""The Redis backend: RQ queues (JSON serializer) carrying job ids, and a registry of live workers.

Every Redis key cpcnn writes itself is built here. RQ's own keys live under ``rq:``. A Redis outage
surfaces as ``UnavailableError`` (HTTP 503 with Retry-After); redis-py reconnects on the next call,
so the API recovers without a restart.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import redis
from cpcnn.service.config import QueueSettings
from cpcnn.service.prometheus import QueueSnapshot, merge_snapshots
from cpcnn.service.queue import (
    FAILURE_CALLBACK_PATH,
    PLATE_SITE_FAILURE_CALLBACK_PATH,
    PLATE_SITE_TASK_PATH,
    TASK_PATH,
    TaskKind,
    queue_name,
)
from rq import Callback, Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from cpcnn.errors import UnavailableError
from cpcnn.schemas import WorkerPublic

logger = logging.getLogger(__name__)

WORKERS_KEY = "cpcnn:workers"  # sorted set: worker name -> last heartbeat (unix seconds)


def worker_key(name: str) -> str:
    return f"cpcnn:worker:{name}"


def attempts_key(job_id: str) -> str:
    """Starts of one job (an integer), counted by workers before they run it."""
    return f"cpcnn:attempts:{job_id}"


class RedisAttempts:
    """The durable attempt counter of RQ mode: ``INCR`` is atomic, so two workers never count the
    same start twice, and the count survives every worker (and, with AOF, Redis itself)."""

    def __init__(self, connection: redis.Redis, *, ttl_s: int) -> None:
        self.connection = connection
        self.ttl_s = ttl_s

    def begin(self, job_id: str) -> int:
        with self.connection.pipeline() as pipe:
            pipe.incr(attempts_key(job_id))
            pipe.expire(attempts_key(job_id), self.ttl_s)
            count, _ = pipe.execute()
        return int(count)

    def reset(self, job_id: str) -> None:
        """A new submission of the job starts with no attempts spent."""
        self.connection.delete(attempts_key(job_id))


def connect(url: str) -> redis.Redis:
    """A client that fails fast (1 s connect) so requests answer 503 instead of hanging."""
    return redis.Redis.from_url(
        url, socket_connect_timeout=1.0, socket_timeout=10.0, health_check_interval=15, retry_on_timeout=False
    )


@contextmanager
def redis_errors(retry_after_s: int) -> Iterator[None]:
    """Redis unreachable -> UnavailableError, the one error the API maps to 503."""
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.BusyLoadingError) as exc:
        raise UnavailableError(f"the job queue (Redis) is unreachable: {exc}", retry_after_s=retry_after_s) from exc


class WorkerRegistry:
    """Workers announce themselves with their loaded models and statistics; entries expire."""

    def __init__(self, connection: redis.Redis, *, ttl_s: float) -> None:
        self.connection = connection
        self.ttl_s = ttl_s

    def publish(self, name: str, info: dict[str, Any], stats: dict[str, Any]) -> None:
        now = time.time()
        record = json.dumps(info | {"last_seen": now, "stats": stats}, separators=(",", ":"))
        with self.connection.pipeline() as pipe:
            pipe.set(worker_key(name), record, px=int(self.ttl_s * 1000))
            pipe.zadd(WORKERS_KEY, {name: now})
            pipe.zremrangebyscore(WORKERS_KEY, 0, now - 10 * self.ttl_s)
            pipe.execute()

    def remove(self, name: str) -> None:
        with self.connection.pipeline() as pipe:
            pipe.delete(worker_key(name))
            pipe.zrem(WORKERS_KEY, name)
            pipe.execute()

    def live(self) -> list[dict[str, Any]]:
        raw: Any = self.connection.zrangebyscore(WORKERS_KEY, time.time() - self.ttl_s, "+inf")
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in raw]
        if not names:
            return []
        records = self.connection.mget([worker_key(n) for n in names])
        return [json.loads(r) for r in records if r is not None]


def worker_public(record: dict[str, Any]) -> WorkerPublic:
    return WorkerPublic(
        name=record["name"], host=record["host"], pid=record["pid"], models=record["models"],
        provider=record["provider"], batch_size=record["batch_size"], warmed=record["warmed"],
        last_seen=datetime.fromtimestamp(record["last_seen"], UTC),
    )


class RedisQueue:
    """RQ on Redis; the API side of ``cpcnn serve --redis-url``."""

    kind = "redis"

    def __init__(self, url: str, settings: QueueSettings, *, worker_ttl_s: float) -> None:
        self.settings = settings
        self.connection = connect(url)
        self.registry = WorkerRegistry(self.connection, ttl_s=worker_ttl_s)
        self.attempts = RedisAttempts(self.connection, ttl_s=settings.data_ttl_s)
        self._queues: dict[str, Queue] = {}

    def queue(self, model: str) -> Queue:
        if model not in self._queues:
            self._queues[model] = Queue(
                queue_name(self.settings.name, model), connection=self.connection, serializer=JSONSerializer
            )
        return self._queues[model]

    def start(self) -> None:
        """Nothing to start: the connection opens on first use (Redis may come up after the API)."""

    def close(self) -> None:
        self.connection.close()

    def enqueue(self, job_id: str, *, model: str, kind: TaskKind = "embed") -> None:
        task, callback = (TASK_PATH, FAILURE_CALLBACK_PATH) if kind == "embed" else (
            PLATE_SITE_TASK_PATH, PLATE_SITE_FAILURE_CALLBACK_PATH)
        with redis_errors(self.settings.retry_after_s):
            self.attempts.reset(job_id)
            self.queue(model).enqueue(
                task,
                {"job_id": job_id},
                job_id=job_id,
                description=f"{kind} {job_id}",
                job_timeout=self.settings.job_timeout_s,
                result_ttl=self.settings.rq_result_ttl_s,
                failure_ttl=self.settings.data_ttl_s,
                retry=Retry(max=self.settings.retries) if self.settings.retries else None,
                on_failure=Callback(callback),
            )

    def cancel(self, job_id: str, *, model: str) -> None:
        with redis_errors(self.settings.retry_after_s):
            self.queue(model).remove(job_id)
            try:
                Job.fetch(job_id, connection=self.connection, serializer=JSONSerializer).delete()
            except NoSuchJobError:
                pass

    def is_queued(self, job_id: str) -> bool:
        with redis_errors(self.settings.retry_after_s):
            try:
                status = Job.fetch(job_id, connection=self.connection, serializer=JSONSerializer).get_status()
            except NoSuchJobError:
                return False
        return status in (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED)

    def depth(self, model: str | None = None) -> int:
        with redis_errors(self.settings.retry_after_s):
            if model is not None:
                return int(self.queue(model).count)
            keys: Any = self.connection.smembers(Queue.redis_queues_keys)
            prefix = f"rq:queue:{self.settings.name}:"
            names = [k.decode() if isinstance(k, bytes) else str(k) for k in keys]
            return sum(int(self.connection.llen(name)) for name in names if name.startswith(prefix))

    def workers(self) -> list[WorkerPublic]:
        with redis_errors(self.settings.retry_after_s):
            return [worker_public(r) for r in self.registry.live()]

    def load_error(self) -> str | None:
        """Workers load models in their own processes; one that cannot load never announces itself."""
        return None

    def snapshot(self) -> QueueSnapshot:
        try:
            with redis_errors(self.settings.retry_after_s):
                records = self.registry.live()
                depth = self.depth()
        except UnavailableError:
            return QueueSnapshot(depth=None, workers=0, stats=merge_snapshots([]))
        return QueueSnapshot(depth=depth, workers=len(records), stats=merge_snapshots(r["stats"] for r in records))

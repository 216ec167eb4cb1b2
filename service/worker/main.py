"""``cpcnn worker``: an RQ worker that loads its model once and runs several jobs at a time, no fork.

rq's own workers fork a child per job (``Worker``), which would reload the model and cannot carry a
CUDA context, or run one job at a time (``SimpleWorker``), which cannot batch cells across jobs. This
worker keeps rq's job lifecycle (executions, started registry, heartbeats, retries of abandoned jobs,
failure callbacks) and replaces only the loop: up to ``slots`` jobs run in threads of this process and
feed one ``Batcher``. A SIGKILLed worker stops heartbeating; its executions expire and the next
maintenance pass of any other worker requeues the jobs (``cpcnn.service.lifecycle`` lists every
status change).

The rq surface this relies on is kept small and listed in ``RQ_SURFACE``; rq is pinned to the tested
minor release and ``tests/service/test_rq_contract.py`` fails on an upgrade that changes any of it.
Like rq's own ``SimpleWorker``, ``EmbedWorker`` overrides ``execute_job`` (plus the heartbeat TTL).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import redis
from cpcnn.service.config import WorkerSettings
from cpcnn.service.job_store import JobStore
from cpcnn.service.queue import LEGACY_TASK_PREFIX, TASK_PREFIX, queue_name
from cpcnn.service.redis_queue import RedisAttempts, WorkerRegistry, connect
from cpcnn.service.worker.runtime import Runtime
from cpcnn.service.worker.tasks import WorkerContext, set_context
from rq import Queue
from rq.exceptions import DequeueTimeout
from rq.executions import Execution
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.timeouts import BaseDeathPenalty
from rq.worker import BaseWorker

logger = logging.getLogger(__name__)

#: What this module uses of rq beyond its documented queue API: ``BaseWorker`` methods called or
#: overridden, and the one private attribute read (rq has no setter for a job's callback name).
RQ_SURFACE = {
    "BaseWorker": ("execute_job", "prepare_execution", "perform_job", "get_heartbeat_ttl", "maintain_heartbeats",
                   "heartbeat", "clean_registries", "register_birth", "register_death", "death_penalty_class"),
    "Job": ("func_name", "_failure_callback_name", "execution_registry", "retries_left"),
    "ExecutionRegistry": ("get_execution_ids", "remove"),
    "Queue": ("dequeue_any",),
}

_REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.BusyLoadingError)


class _NoDeathPenalty(BaseDeathPenalty):
    """Jobs run in threads, where SIGALRM cannot reach them; the job timeout is enforced by RQ's
    heartbeat expiry instead (a stuck worker stops heartbeating its jobs only when it dies)."""

    def setup_death_penalty(self) -> None:
        """No alarm."""

    def cancel_death_penalty(self) -> None:
        """No alarm."""


class EmbedWorker(BaseWorker):
    """rq's BaseWorker with short, configurable heartbeats; jobs run in this process."""

    death_penalty_class = _NoDeathPenalty

    def __init__(self, *args: Any, heartbeat_ttl_s: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.heartbeat_ttl_s = heartbeat_ttl_s
        self.running: dict[str, tuple[Job, Execution]] = {}  # execution id -> job, for heartbeats

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return self.heartbeat_ttl_s

    def execute_job(self, job: Job, queue: Queue) -> None:
        """Run one job in the calling thread (a slot of ``WorkerLoop``), as ``SimpleWorker`` does."""
        adopt_legacy_paths(job)
        forget_lost_executions(job)
        execution = self.prepare_execution(job)
        self.running[execution.id] = (job, execution)
        try:
            self.perform_job(job, queue, execution)
        finally:
            self.running.pop(execution.id, None)


def adopt_legacy_paths(job: Job) -> None:
    """Jobs queued before the ``cpcnn.service`` package name stored ``service.worker.tasks.*`` paths,
    which no longer import: point them at the same functions under their current name."""
    name = job.func_name or ""
    if name.startswith(LEGACY_TASK_PREFIX):
        job.func_name = TASK_PREFIX + name.removeprefix(LEGACY_TASK_PREFIX)
        logger.info("job %s: mapped legacy task path %s", job.id, name)
    callback = job._failure_callback_name
    if callback and callback.startswith(LEGACY_TASK_PREFIX):
        job._failure_callback_name = TASK_PREFIX + callback.removeprefix(LEGACY_TASK_PREFIX)


def forget_lost_executions(job: Job) -> None:
    """Drop executions of dead workers from the job's execution registry.

    Their hashes expire with the heartbeat, but the registry lists them 60 s longer, and rq fails
    to delete a finished job (``result_ttl=0``) while it lists an execution it cannot fetch.
    """
    registry = job.execution_registry
    connection = job.connection
    for execution_id in registry.get_execution_ids():
        execution = Execution(execution_id, job.id, connection)
        if not connection.exists(execution.key):
            with connection.pipeline() as pipe:
                registry.remove(execution, pipeline=pipe)
                pipe.execute()


class WorkerLoop:
    """Dequeue while slots are free, heartbeat every job in flight, clean registries periodically."""

    def __init__(self, settings: WorkerSettings, runtime: Runtime, jobs: JobStore) -> None:
        self.settings = settings
        self.runtime = runtime
        self.jobs = jobs
        tuning = settings.worker
        self.name = settings.name or f"{socket.gethostname()}-{os.getpid()}"
        self.heartbeat_s = tuning.heartbeat_s
        self.connection = connect(settings.redis_url or "")
        self.registry = WorkerRegistry(self.connection, ttl_s=3 * tuning.heartbeat_s)
        self.queue_name = queue_name(settings.queue.name, settings.model)
        self.pool = ThreadPoolExecutor(max_workers=tuning.slots, thread_name_prefix="cpcnn-job")
        self.in_flight: dict[Future[None], Job] = {}
        self.stop = threading.Event()
        self.worker: EmbedWorker | None = None
        self.processed = 0

    def _make_worker(self) -> EmbedWorker:
        tuning = self.settings.worker
        worker = EmbedWorker(
            [self.queue_name], name=self.name, connection=self.connection, serializer=JSONSerializer,
            job_monitoring_interval=tuning.heartbeat_s, maintenance_interval=tuning.maintenance_s,
            worker_ttl=max(3 * tuning.heartbeat_s, 10), heartbeat_ttl_s=3 * tuning.heartbeat_s,
            default_result_ttl=self.settings.queue.rq_result_ttl_s,
        )
        worker.register_birth()
        return worker

    def info(self) -> dict[str, Any]:
        models = self.runtime.models()
        return {
            "name": self.name, "host": socket.gethostname(), "pid": os.getpid(), "models": [m.name for m in models],
            "provider": models[0].provider if models else "", "batch_size": models[0].batch_size if models else 0,
            "warmed": bool(models),
        }

    def run(self) -> int:
        backoff = 0.5
        last_beat = last_maintenance = 0.0
        while not self.stop.is_set():
            try:
                if self.worker is None:
                    self.worker = self._make_worker()
                    logger.info("worker %s listening on %s", self.name, self.queue_name)
                now = time.monotonic()
                if now - last_beat >= self.heartbeat_s:
                    self._heartbeat()
                    last_beat = now
                if now - last_maintenance >= self.settings.worker.maintenance_s:
                    self.worker.clean_registries()
                    last_maintenance = now
                self._reap()
                took = self._take() if len(self.in_flight) < self.settings.worker.slots else False
                if not took:
                    if self.settings.burst and not self.in_flight and self._queue_empty():
                        break
                    self._wait_for_any(0.05 if self.in_flight else 0.0)
                backoff = 0.5
            except _REDIS_DOWN as exc:
                logger.warning("Redis unreachable (%s); retrying in %.1f s", exc, backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
        self._drain()
        return 0

    def _take(self) -> bool:
        """Dequeue one job if there is one (blocking up to 1 s when idle)."""
        assert self.worker is not None
        timeout = None if self.in_flight else 1
        try:
            result = Queue.dequeue_any(self.worker.queues, timeout, connection=self.connection,
                                       job_class=Job, serializer=JSONSerializer)
        except DequeueTimeout:
            return False
        if result is None:
            return False
        job, queue = result
        self.in_flight[self.pool.submit(self.worker.execute_job, job, queue)] = job
        return True

    def _heartbeat(self) -> None:
        assert self.worker is not None
        self.worker.heartbeat()
        for job, execution in list(self.worker.running.values()):
            self.worker.maintain_heartbeats(job, execution)
        self.registry.publish(self.name, self.info(), self.runtime.stats.snapshot())

    def _reap(self) -> None:
        for future, job in list(self.in_flight.items()):
            if future.done():
                del self.in_flight[future]
                self.processed += 1
                if future.exception() is not None:
                    logger.error("job %s: worker error %s", job.id, future.exception())

    def _wait_for_any(self, timeout: float) -> None:
        if timeout <= 0:
            return
        futures = list(self.in_flight)
        if futures:
            from concurrent.futures import FIRST_COMPLETED, wait

            wait(futures, timeout=timeout, return_when=FIRST_COMPLETED)

    def _queue_empty(self) -> bool:
        assert self.worker is not None
        return all(q.count == 0 for q in self.worker.queues)

    def _drain(self) -> None:
        """Warm shutdown: finish the jobs in flight (heartbeating them), then unregister."""
        while self.in_flight:
            try:
                self._heartbeat()
            except _REDIS_DOWN:
                pass
            self._wait_for_any(min(1.0, float(self.heartbeat_s)))
            self._reap()
        self.pool.shutdown(wait=True)
        try:
            if self.worker is not None:
                self.worker.register_death()
            self.registry.remove(self.name)
        except _REDIS_DOWN:
            logger.warning("could not unregister worker %s: Redis unreachable", self.name)


def run_worker(settings: WorkerSettings) -> int:
    """Load and warm the model, then serve its queue until SIGTERM/SIGINT (or, with burst, until empty)."""
    jobs = JobStore(settings.resolved_data_dir())
    runtime = Runtime(settings.model_store(), settings.worker)
    runtime.batcher(settings.model)  # load + warm before taking any job
    loop = WorkerLoop(settings, runtime, jobs)
    attempts = RedisAttempts(loop.connection, ttl_s=settings.queue.data_ttl_s)
    set_context(WorkerContext(jobs=jobs, runtime=runtime, name=loop.name, max_attempts=settings.queue.retries + 1,
                              attempts=attempts))

    def request_stop(signum: int, frame: object) -> None:
        logger.info("worker %s: signal %d, finishing jobs in flight", loop.name, signum)
        loop.stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        return loop.run()
    finally:
        set_context(None)
        runtime.close()

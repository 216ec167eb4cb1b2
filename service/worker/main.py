"""``cpcnn worker``: an RQ worker that loads its model once and runs several jobs at a time, no fork.

rq's own workers fork a child per job (``Worker``), which would reload the model and cannot carry a
CUDA context, or run one job at a time (``SimpleWorker``), which cannot batch cells across jobs. This
worker keeps rq's job lifecycle (executions, started registry, heartbeats, retries of abandoned jobs,
failure callbacks) and replaces only the loop: up to ``slots`` jobs run in threads of this process and
feed one ``Batcher``. A SIGKILLed worker stops heartbeating; its executions expire and the next
maintenance pass of any other worker requeues the jobs.
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
from cpcnn.service.queue import queue_name
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

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return self.heartbeat_ttl_s

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        super().prepare_job_execution(job, remove_from_intermediate_queue=True)

    def perform_job(self, job: Job, queue: Queue, execution: Execution) -> bool:
        self.forget_lost_executions(job)
        return bool(super().perform_job(job, queue, execution))

    def forget_lost_executions(self, job: Job) -> None:
        """Drop executions of dead workers from the job's execution registry.

        Their hashes expire with the heartbeat, but the registry lists them 60 s longer, and rq fails
        to delete a finished job (``result_ttl=0``) while it lists an execution it cannot fetch.
        """
        registry_key = job.execution_registry.key
        for raw_id in self.connection.zrange(registry_key, 0, -1):
            execution_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            if not self.connection.exists(Execution(execution_id, job.id, self.connection).key):
                self.connection.zrem(registry_key, execution_id)

    def execute_job(self, job: Job, queue: Queue) -> None:
        raise NotImplementedError("EmbedWorker runs jobs through WorkerLoop")


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
        self.in_flight: dict[str, tuple[Job, Execution, Future[bool]]] = {}
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
        execution = self.worker.prepare_execution(job)
        self.worker.prepare_job_execution(job)
        future = self.pool.submit(self.worker.perform_job, job, queue, execution)
        self.in_flight[execution.id] = (job, execution, future)
        return True

    def _heartbeat(self) -> None:
        assert self.worker is not None
        self.worker.heartbeat()
        for job, execution, future in list(self.in_flight.values()):
            if not future.done():
                self.worker.maintain_heartbeats(job, execution)
        self.registry.publish(self.name, self.info(), self.runtime.stats.snapshot())

    def _reap(self) -> None:
        for key, (job, _, future) in list(self.in_flight.items()):
            if future.done():
                del self.in_flight[key]
                self.processed += 1
                if future.exception() is not None:
                    logger.error("job %s: worker error %s", job.id, future.exception())

    def _wait_for_any(self, timeout: float) -> None:
        if timeout <= 0:
            return
        futures = [f for _, _, f in self.in_flight.values()]
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

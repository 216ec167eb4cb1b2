"""Where jobs wait: the interface the API uses, and the in-process queue of ``cpcnn serve``.

Both backends carry job ids only; payloads and status live in the ``JobStore``. ``RedisQueue``
(``cpcnn.service.redis_queue``) is the same interface on RQ for separate worker processes.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Protocol

from cpcnn.service.job_store import JobStore
from cpcnn.service.prometheus import QueueSnapshot
from cpcnn.service.worker.runtime import Runtime
from cpcnn.service.worker.tasks import WorkerContext, record_failure, run_job

from cpcnn.errors import NotFoundError
from cpcnn.schemas import JobStatus, WorkerPublic

logger = logging.getLogger(__name__)

#: The RQ job function, by dotted path (the API never imports it).
TASK_PATH = "cpcnn.service.worker.tasks.embed_job"
FAILURE_CALLBACK_PATH = "cpcnn.service.worker.tasks.on_failure"


def queue_name(base: str, model: str) -> str:
    """One queue per model: a worker serves one model and listens only to its queue."""
    return f"{base}:{model}"


class JobQueue(Protocol):
    """What the API needs from a queue backend."""

    kind: str

    def enqueue(self, job_id: str, *, model: str) -> None:
        """Put a job (already written to the JobStore) in line; raises UnavailableError when down."""

    def cancel(self, job_id: str, *, model: str) -> None:
        """Take a queued job out of line (no error if it is not there)."""

    def depth(self, model: str | None = None) -> int:
        """Jobs waiting (for one model, or all); raises UnavailableError when the backend is down."""

    def workers(self) -> list[WorkerPublic]:
        """Live workers and the models they have loaded and warmed."""

    def snapshot(self) -> QueueSnapshot:
        """Depth, worker count and summed worker statistics, for /metrics; never raises."""

    def start(self) -> None: ...

    def close(self) -> None: ...


class LocalQueue:
    """In-process queue and worker threads for ``cpcnn serve`` without Redis.

    The same ``run_job`` as RQ workers; a crash of the job function re-queues it up to ``retries``
    times. Jobs left queued or running by a previous process are picked up again at start; their
    attempts are counted in ``state.json`` before each run, so a job that kills the process is
    failed once ``1 + retries`` attempts are spent instead of being rerun at every start.
    """

    kind = "embedded"

    def __init__(
        self, jobs: JobStore, runtime: Runtime, *, slots: int, retries: int, preload: tuple[str, ...] = ()
    ) -> None:
        self.jobs = jobs
        self.runtime = runtime
        self.retries = retries
        self.preload = preload
        self._slots = slots
        self._ids: queue.Queue[tuple[str, int] | None] = queue.Queue()  # (job id, crashes in this process)
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._loader: threading.Thread | None = None
        self._load_error: str | None = None
        self._context = WorkerContext(
            jobs=jobs, runtime=runtime, name=f"{socket.gethostname()}:{os.getpid()}:embedded", max_attempts=retries + 1
        )

    def start(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=self._slots, thread_name_prefix="cpcnn-job")
        for _ in range(self._slots):
            self._pool.submit(self._work)
        self._loader = threading.Thread(target=self._load_models, name="cpcnn-model-load", daemon=True)
        self._loader.start()
        for job_id in self.jobs.ids():
            try:
                state = self.jobs.state(job_id)
            except (NotFoundError, ValueError):
                continue
            if not state.status.finished:
                self._ids.put((job_id, 0))

    def _load_models(self) -> None:
        for model in self.preload:
            try:
                self.runtime.batcher(model)
            except Exception as exc:  # readiness reports it; jobs for this model fail with the message
                self._load_error = str(exc)
                logger.error("could not load model %s: %s", model, exc)

    def enqueue(self, job_id: str, *, model: str) -> None:
        with self._lock:
            self._cancelled.discard(job_id)
        self._ids.put((job_id, 0))

    def cancel(self, job_id: str, *, model: str) -> None:
        with self._lock:
            self._cancelled.add(job_id)

    def depth(self, model: str | None = None) -> int:
        return self._ids.qsize()

    def workers(self) -> list[WorkerPublic]:
        host, pid = socket.gethostname(), os.getpid()
        return [
            WorkerPublic(name=self._context.name, host=host, pid=pid, models=[info.name], provider=info.provider,
                         batch_size=info.batch_size, warmed=info.warmed, last_seen=datetime.now(UTC))
            for info in self.runtime.models()
        ]

    def snapshot(self) -> QueueSnapshot:
        return QueueSnapshot(depth=self.depth(), workers=len(self.runtime.models()), stats=self.runtime.stats.snapshot())

    @property
    def load_error(self) -> str | None:
        return self._load_error

    def close(self) -> None:
        if self._pool is None:
            return
        for _ in range(self._slots):
            self._ids.put(None)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None
        self.runtime.close()

    def _work(self) -> None:
        while True:
            item = self._ids.get()
            if item is None:
                return
            job_id, crashes = item
            with self._lock:
                if job_id in self._cancelled:
                    self._cancelled.discard(job_id)
                    continue
            try:
                run_job(job_id, self._context)
            except Exception as exc:
                # The durable count includes earlier processes; the local one ends a job that fails
                # before its start could be recorded.
                attempts = max(self._attempts(job_id), crashes + 1)
                final = attempts >= self._context.max_attempts
                logger.exception("job %s crashed (attempt %d)%s", job_id, attempts, "" if final else "; retrying")
                record_failure(self.jobs, job_id, exc, final=final)
                if not final:
                    self._ids.put((job_id, crashes + 1))
            finally:
                self._ids.task_done()

    def _attempts(self, job_id: str) -> int:
        """Starts recorded on disk (counted before each run, so they include the one that crashed)."""
        try:
            return self.jobs.state(job_id).attempts
        except (NotFoundError, ValueError):
            return self._context.max_attempts

    def wait_idle(self) -> None:
        """Block until every queued job has been processed (tests, benchmarks)."""
        self._ids.join()


def is_finished(jobs: JobStore, job_id: str) -> bool:
    try:
        return jobs.state(job_id).status in (JobStatus.SUCCEEDED, JobStatus.FAILED)
    except NotFoundError:
        return True

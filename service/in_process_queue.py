"""The queue of ``cpcnn serve`` without Redis: an in-process queue of job ids and worker threads.

The same ``run_job`` as RQ workers; ``cpcnn.service.lifecycle`` decides every status change,
retries included.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from cpcnn.service import lifecycle
from cpcnn.service.job_store import JobStore
from cpcnn.service.prometheus import QueueSnapshot
from cpcnn.service.queue import TaskKind
from cpcnn.service.worker import plate_tasks
from cpcnn.service.worker.runtime import Runtime
from cpcnn.service.worker.tasks import WorkerContext, problem_for, run_job

from cpcnn.schemas import WorkerPublic

logger = logging.getLogger(__name__)


class InProcessQueue:
    """A ``JobQueue`` whose workers are ``slots`` threads of this process, sharing one ``Runtime``.

    A crash of the job function re-queues it while attempts are left. Jobs left queued or running by
    a previous process are picked up again at start; their attempts are counted in ``state.json``
    before each run, so a job that kills the process is failed once its attempts are spent instead
    of being rerun at every start.
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
        # (job id, task kind, crashes in this process)
        self._ids: queue.Queue[tuple[str, TaskKind, int] | None] = queue.Queue()
        self._cancelled: set[str] = set()
        self._waiting: set[str] = set()  # in line or running
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._loader: threading.Thread | None = None
        self._load_error: str | None = None
        self._context = WorkerContext(
            jobs=jobs, runtime=runtime, name=f"{socket.gethostname()}:{os.getpid()}:embedded",
            max_attempts=lifecycle.max_attempts(retries),
        )

    def start(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=self._slots, thread_name_prefix="cpcnn-job")
        for _ in range(self._slots):
            self._pool.submit(self._work)
        self._loader = threading.Thread(target=self._load_models, name="cpcnn-model-load", daemon=True)
        self._loader.start()
        for job_id in lifecycle.unfinished(self.jobs):
            self._ids.put((job_id, "embed", 0))

    def _load_models(self) -> None:
        for model in self.preload:
            try:
                self.runtime.batcher(model)
            except Exception as exc:  # readiness reports it; jobs for this model fail with the message
                self._load_error = str(exc)
                logger.error("could not load model %s: %s", model, exc)

    def enqueue(self, job_id: str, *, model: str, kind: TaskKind = "embed") -> None:
        with self._lock:
            self._cancelled.discard(job_id)
            self._waiting.add(job_id)
        self._ids.put((job_id, kind, 0))

    def is_queued(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._waiting and job_id not in self._cancelled

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
            job_id, kind, crashes = item
            with self._lock:
                if job_id in self._cancelled:
                    self._cancelled.discard(job_id)
                    self._waiting.discard(job_id)
                    continue
            try:
                if kind == "plate_site":
                    plate_tasks.run_plate_site(job_id, self._context)
                else:
                    run_job(job_id, self._context)
            except Exception as exc:
                final = self._crash_is_final(job_id, kind, crashes + 1)
                logger.exception("job %s crashed%s", job_id, "" if final else "; retrying")
                if kind == "plate_site":
                    plate_tasks.after_site_crash(self._context, job_id, exc, final=final)
                else:
                    lifecycle.after_crash(self.jobs, job_id, problem_for(exc, job_id), final=final)
                if not final:
                    self._ids.put((job_id, kind, crashes + 1))
                    continue
            with self._lock:
                self._waiting.discard(job_id)

    def _crash_is_final(self, job_id: str, kind: TaskKind, crashes: int) -> bool:
        if kind == "plate_site":
            return plate_tasks.site_crash_is_final(self._context, job_id, crashes=crashes)
        return lifecycle.crash_is_final(self.jobs, job_id, crashes=crashes, max_attempts=self._context.max_attempts)

"""Where jobs wait: the interface the API uses, whatever the backend.

Backends carry job ids only; payloads and status live in the ``JobStore``, and every status change
is made by ``cpcnn.service.lifecycle``. ``InProcessQueue`` (``cpcnn.service.in_process_queue``) runs
jobs in threads of the API process (``cpcnn serve``); ``RedisQueue`` (``cpcnn.service.redis_queue``)
puts them on RQ for separate ``cpcnn worker`` processes. This module imports neither.
"""

from __future__ import annotations

from typing import Literal, Protocol

from cpcnn.service.prometheus import QueueSnapshot

from cpcnn.schemas import WorkerPublic

#: The RQ job function and failure callback, by dotted path (the API never imports them). RQ stores
#: these strings in Redis; ``LEGACY_TASK_PREFIX`` is what versions before the ``cpcnn.service``
#: package name stored, and workers map it (``cpcnn.service.worker.main``).
TASK_PATH = "cpcnn.service.worker.tasks.embed_job"
FAILURE_CALLBACK_PATH = "cpcnn.service.worker.tasks.on_failure"
TASK_PREFIX = "cpcnn.service.worker.tasks."
#: One site of a plate job (``cpcnn.service.worker.plate_tasks``): the same queues, another task kind.
PLATE_SITE_TASK_PATH = "cpcnn.service.worker.plate_tasks.plate_site_job"
PLATE_SITE_FAILURE_CALLBACK_PATH = "cpcnn.service.worker.plate_tasks.on_site_failure"
#: Task kinds a queue carries: an uploaded field of view (``JobStore``) or a plate's site (``PlateStore``).
TaskKind = Literal["embed", "plate_site"]
LEGACY_TASK_PREFIX = "service.worker.tasks."


def queue_name(base: str, model: str) -> str:
    """One queue per model: a worker serves one model and listens only to its queue."""
    return f"{base}:{model}"


class JobQueue(Protocol):
    """What the API needs from a queue backend."""

    kind: str

    def enqueue(self, job_id: str, *, model: str, kind: TaskKind = "embed") -> None:
        """Put a job (already written to the JobStore, or a site of a plate in the PlateStore) in line;
        raises UnavailableError when down."""

    def cancel(self, job_id: str, *, model: str) -> None:
        """Take a queued job out of line (no error if it is not there)."""

    def is_queued(self, job_id: str) -> bool:
        """Whether the job is in line or running (a plate resumed at start is not queued twice)."""

    def depth(self, model: str | None = None) -> int:
        """Jobs waiting (for one model, or all); raises UnavailableError when the backend is down."""

    def workers(self) -> list[WorkerPublic]:
        """Live workers and the models they have loaded and warmed."""

    def load_error(self) -> str | None:
        """Why a model this backend loads itself failed to load (readiness shows it), else None."""

    def snapshot(self) -> QueueSnapshot:
        """Depth, worker count and summed worker statistics, for /metrics; never raises."""

    def start(self) -> None: ...

    def close(self) -> None: ...

"""Job functions: load -> (detect) -> crop -> embed -> store. No HTTP, no queue specifics.

``run_job`` is the one code path: the embedded worker threads call it directly, RQ workers call it
through ``embed_job`` (enqueued by dotted path with a small JSON payload, so the API never imports
ONNX Runtime). State transitions are written to the job's ``state.json``; a job that already
succeeded is never computed again, which makes retries after a crash harmless.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from cpcnn.service.storage import JobSpec, JobState, JobStore, utcnow
from cpcnn.service.worker.runtime import Runtime

from cpcnn._types import F32Array, F64Array
from cpcnn.errors import CpcnnError, InputError, NotFoundError
from cpcnn.schemas import JobStatus, Problem

logger = logging.getLogger(__name__)


class AttemptCounter(Protocol):
    """A durable count of a job's starts, shared by every process that may run the job."""

    def begin(self, job_id: str) -> int:
        """Count one more start of ``job_id`` atomically; returns the count, this start included."""


@dataclass
class WorkerContext:
    """What a job needs from its process: the job store, the loaded models and a name for logs.

    A job starts at most ``max_attempts`` times (1 + the queue's retries), counted before it runs:
    by ``attempts`` when given (Redis, atomic across workers), else by the ``attempts`` field of its
    ``state.json``. A job that keeps killing the process running it is failed, not run forever.
    """

    jobs: JobStore
    runtime: Runtime
    name: str
    max_attempts: int = 3
    attempts: AttemptCounter | None = None


_context: WorkerContext | None = None


def set_context(context: WorkerContext | None) -> None:
    """Install the process-wide context (the RQ worker does this once, before taking jobs)."""
    global _context
    _context = context


def embed_job(payload: dict[str, Any]) -> dict[str, Any]:
    """RQ entry point: ``payload = {"job_id": ...}``; returns a small summary (stored by RQ)."""
    if _context is None:
        raise RuntimeError("worker context not set: run jobs with 'cpcnn worker'")
    return run_job(str(payload["job_id"]), _context)


def run_job(job_id: str, context: WorkerContext) -> dict[str, Any]:
    """Embed one job. Input problems end the job as failed; anything else raises so the queue retries."""
    jobs = context.jobs
    try:
        spec, state = jobs.spec(job_id), jobs.state(job_id)
    except NotFoundError:
        logger.info("job %s was deleted before it ran", job_id)
        return {"job_id": job_id, "status": "deleted"}
    if state.status == JobStatus.SUCCEEDED and jobs.has_result(job_id):
        return {"job_id": job_id, "status": "succeeded", "n_cells": state.n_cells}
    attempt = context.attempts.begin(job_id) if context.attempts is not None else state.attempts + 1
    if attempt > context.max_attempts:
        give_up(jobs, job_id, state, attempts=attempt - 1)
        context.runtime.stats.inc("jobs_failed")
        logger.error("job %s: gave up after %d attempts (the process running it died)", job_id, attempt - 1)
        return {"job_id": job_id, "status": "failed"}
    started = utcnow()
    state = state.model_copy(update={
        "status": JobStatus.RUNNING, "attempts": attempt, "worker": context.name,
        "started_at": started, "queue_wait_s": (started - spec.created_at).total_seconds(), "error": None,
    })
    jobs.write_state(job_id, state)  # durable before the job runs: a crash mid-job still counts
    context.runtime.stats.observe("queue_wait_seconds", state.queue_wait_s or 0.0)
    began = time.perf_counter()
    try:
        features, centers = _embed(job_id, spec, context)
    except (InputError, NotFoundError) as exc:
        _finish(jobs, job_id, state, began, error=problem_for(exc, job_id))
        context.runtime.stats.inc("jobs_failed")
        logger.info("job %s failed: %s", job_id, exc)
        return {"job_id": job_id, "status": "failed"}
    jobs.write_result(job_id, features, centers)
    _finish(jobs, job_id, state, began, n_cells=features.shape[0], feature_size=features.shape[1])
    jobs.drop_inputs(job_id)
    context.runtime.stats.inc("jobs_succeeded")
    context.runtime.stats.observe("job_seconds", time.perf_counter() - began)
    logger.info(
        "job %s plate=%s well=%s site=%s n_cells=%d %.3f s", job_id, spec.metadata.get("Metadata_Plate", ""),
        spec.metadata.get("Metadata_Well", ""), spec.metadata.get("Metadata_Site", ""), features.shape[0],
        time.perf_counter() - began,
    )
    return {"job_id": job_id, "status": "succeeded", "n_cells": int(features.shape[0])}


def _embed(job_id: str, spec: JobSpec, context: WorkerContext) -> tuple[F32Array, F64Array]:
    batcher = context.runtime.batcher(spec.model)
    embedder = batcher.embedder
    normalization: Any = spec.normalization
    with batcher.preparing():
        image = context.jobs.load_image(job_id)
        centers = context.jobs.load_centers(job_id)
        if centers is None:
            from cpcnn.nuclei import detect_nuclei

            dna = [c.lower() for c in embedder.manifest.channels].index("dna")
            limit = {"max_nuclei": spec.max_cells} if spec.max_cells is not None else {}
            centers = detect_nuclei(image[:, :, dna], **limit)  # refuses before any per-cell array exists
        site = embedder.site_crops(image, centers, normalization=normalization)
    features = np.empty((len(site), embedder.feature_size), np.float32)
    for rows in site.slices():
        with batcher.preparing():
            crops = site.crop(rows)  # into this job thread's reused buffer
        # embed() returns only once the batcher is done with the crops, so the buffer can be reused.
        features[rows] = batcher.embed(crops)
    return features, centers


def _finish(
    jobs: JobStore, job_id: str, state: JobState, began: float, *, error: Problem | None = None,
    n_cells: int | None = None, feature_size: int | None = None,
) -> None:
    done = state.model_copy(update={
        "status": JobStatus.FAILED if error else JobStatus.SUCCEEDED, "finished_at": utcnow(),
        "run_s": time.perf_counter() - began, "error": error, "n_cells": n_cells, "feature_size": feature_size,
        "completions": state.completions + (0 if error else 1),
    })
    try:
        jobs.write_state(job_id, done)
    except NotFoundError:
        logger.info("job %s was deleted while it ran", job_id)


def problem_for(exc: BaseException, job_id: str) -> Problem:
    """A failure as the client sees it: input errors verbatim, anything else without internals."""
    if isinstance(exc, InputError):
        return Problem(title="Invalid input", status=422, detail=str(exc), code="input_error",
                       instance=f"/v1/jobs/{job_id}")
    if isinstance(exc, NotFoundError):
        return Problem(title="Not found", status=404, detail=str(exc), code="not_found",
                       instance=f"/v1/jobs/{job_id}")
    detail = str(exc) if isinstance(exc, CpcnnError) else f"worker error ({type(exc).__name__})"
    return Problem(title="Job failed", status=500, detail=detail, code="job_failed", instance=f"/v1/jobs/{job_id}")


def lost_problem(job_id: str, *, attempts: int | None = None) -> Problem:
    """The worker process died while running the job; with ``attempts``, none are left."""
    detail = "the worker running this job stopped"
    if attempts is not None:
        detail = f"gave up after {attempts} attempts: the worker process died while running it"
    return Problem(title="Job failed", status=500, detail=detail, code="worker_lost", instance=f"/v1/jobs/{job_id}")


def give_up(jobs: JobStore, job_id: str, state: JobState, *, attempts: int) -> None:
    """Fail a job whose attempts are spent without running it again."""
    failed = state.model_copy(update={
        "status": JobStatus.FAILED, "attempts": attempts, "finished_at": utcnow(),
        "error": lost_problem(job_id, attempts=attempts),
    })
    try:
        jobs.write_state(job_id, failed)
    except NotFoundError:
        logger.info("job %s was deleted meanwhile", job_id)


def record_failure(jobs: JobStore, job_id: str, exc: BaseException | None, *, final: bool) -> None:
    """After a crash (``exc``) or a lost worker (None): back to queued when a retry follows, failed when none does."""
    try:
        state = jobs.state(job_id)
    except NotFoundError:
        return
    if state.status == JobStatus.SUCCEEDED:
        return
    if exc is not None:
        error = problem_for(exc, job_id)
    else:
        error = lost_problem(job_id, attempts=state.attempts if final else None)
    status = JobStatus.FAILED if final else JobStatus.QUEUED
    update: dict[str, Any] = {"status": status, "error": error}
    if final:
        update["finished_at"] = utcnow()
    try:
        jobs.write_state(job_id, state.model_copy(update=update))
    except NotFoundError:
        return


def on_failure(job: Any, connection: Any, exc_type: Any = None, exc_value: Any = None, traceback: Any = None) -> None:
    """RQ failure callback (also called for jobs abandoned by a killed worker)."""
    if _context is None:
        return
    job_id = str(job.id)
    final = not (job.retries_left and job.retries_left > 0)
    lost = exc_type is not None and exc_type.__name__ == "AbandonedJobError"  # its worker died mid-job
    error = exc_value if isinstance(exc_value, BaseException) and not lost else None
    record_failure(_context.jobs, job_id, error, final=final)
    if final:
        _context.runtime.stats.inc("jobs_failed")
    logger.warning("job %s failed in worker (%s); %s", job_id, exc_type.__name__ if exc_type else "lost",
                   "giving up" if final else "will retry")

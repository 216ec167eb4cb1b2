"""Job functions: load -> (detect) -> crop -> embed -> store. No HTTP, no queue specifics.

``run_job`` is the one code path: the embedded worker threads call it directly, RQ workers call it
through ``embed_job`` (enqueued by dotted path with a small JSON payload, so the API never imports
ONNX Runtime). Every status change goes through ``cpcnn.service.lifecycle``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from cpcnn.service import lifecycle
from cpcnn.service.job_store import JobSpec, JobStore
from cpcnn.service.lifecycle import AttemptCounter
from cpcnn.service.worker.runtime import Runtime

from cpcnn._types import F32Array, F64Array
from cpcnn.errors import CpcnnError, InputError, NotFoundError
from cpcnn.schemas import Problem

logger = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    """What a job needs from its process: the job store, the loaded models and a name for logs.

    A job starts at most ``max_attempts`` times (``lifecycle.max_attempts``), counted before it
    runs by ``attempts`` when given (Redis, atomic across workers), else in its ``state.json``.
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


def current_context() -> WorkerContext | None:
    """The process-wide context (None until ``set_context``), for other task kinds' entry points."""
    return _context


def embed_job(payload: dict[str, Any]) -> dict[str, Any]:
    """RQ entry point: ``payload = {"job_id": ...}``; returns a small summary (stored by RQ)."""
    if _context is None:
        raise RuntimeError("worker context not set: run jobs with 'cpcnn worker'")
    return run_job(str(payload["job_id"]), _context)


def run_job(job_id: str, context: WorkerContext) -> dict[str, Any]:
    """Embed one job; ``lifecycle`` makes every status change. Errors that a retry cannot fix end
    the job as failed; anything else raises so the queue retries."""
    jobs = context.jobs
    begun = lifecycle.begin(jobs, job_id, worker=context.name, max_attempts=context.max_attempts,
                            counter=context.attempts)
    if not isinstance(begun, lifecycle.Begun):
        if begun["status"] == "failed":
            context.runtime.stats.inc("jobs_failed")
        return begun
    spec, state = begun.spec, begun.state
    context.runtime.stats.observe("queue_wait_seconds", state.queue_wait_s or 0.0)
    began = time.perf_counter()
    try:
        features, centers = _embed(job_id, spec, context)
    except Exception as exc:
        if lifecycle.retryable(exc):
            raise
        lifecycle.finish(jobs, job_id, state, began, error=problem_for(exc, job_id))
        context.runtime.stats.inc("jobs_failed")
        logger.info("job %s failed: %s", job_id, exc)
        return {"job_id": job_id, "status": "failed"}
    jobs.write_result(job_id, features, centers)
    lifecycle.finish(jobs, job_id, state, began, n_cells=features.shape[0], feature_size=features.shape[1])
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


def problem_for(exc: BaseException, job_id: str) -> Problem:
    """A failure as the client sees it: input errors verbatim, anything else without internals.

    Whatever made a job's input bad (a size, a format), its error is declared ``InputError`` (422); a
    missing model is ``NotFoundError`` (404): the job reports the kind, the message says which.
    """
    instance = f"/v1/jobs/{job_id}"
    for kind in (InputError, NotFoundError):
        if isinstance(exc, kind):
            return Problem.from_error(exc, instance, kind=kind)
    detail = str(exc) if isinstance(exc, CpcnnError) else f"worker error ({type(exc).__name__})"
    return Problem(title="Job failed", status=500, detail=detail, code="job_failed", instance=instance)


def on_failure(job: Any, connection: Any, exc_type: Any = None, exc_value: Any = None, traceback: Any = None) -> None:
    """RQ failure callback (also called for jobs abandoned by a killed worker): ``lifecycle`` decides."""
    if _context is None:
        return
    job_id = str(job.id)
    abandoned = exc_type is not None and exc_type.__name__ == "AbandonedJobError"  # its worker died mid-job
    error = problem_for(exc_value, job_id) if isinstance(exc_value, BaseException) else None
    final = lifecycle.after_rq_failure(_context.jobs, job_id, error, retries_left=job.retries_left, abandoned=abandoned)
    if final:
        _context.runtime.stats.inc("jobs_failed")
    logger.warning("job %s failed in worker (%s); %s", job_id, exc_type.__name__ if exc_type else "lost",
                   "giving up" if final else "will retry")

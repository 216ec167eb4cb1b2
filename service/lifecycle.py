"""The embedding job's state machine: every status change of a job is made here, nowhere else.

A job's status lives in its ``state.json`` (``JobStore``); queues carry job ids only. States:
``queued``, ``running``, ``succeeded`` and ``failed`` (final), plus ``lost``: the process running the
job died, which is not stored as such but resolved at once into ``queued`` or ``failed``.

Transitions (function that makes it, who calls it):

- submit -> ``queued``: ``JobStore.create`` from the API. Submitting the same content again returns
  the existing job, unless it failed (``recompute_on_resubmit``): then it is deleted and queued anew
  with no attempts spent. Resubmission is always safe because a job id is the hash of the job's
  content, so the same request can never create a second, different job. This is also why the SDK
  may retry a submit after a 503 or a dropped connection (its retry policy lives in the SDK).
- ``queued`` -> ``running``: ``begin``, by whichever worker takes the job. The start is counted
  durably *before* the job runs (``AttemptCounter``: Redis ``INCR`` in RQ mode, atomic across
  workers; else the ``attempts`` field of ``state.json``), so a job that kills its process still
  spends an attempt. A job already succeeded (result on disk) is not run again, which makes every
  retry after a crash harmless.
- ``queued`` -> ``failed`` (lost, attempts spent): ``begin`` when the count exceeds
  ``max_attempts`` (1 + the queue's retries): a job that keeps killing its workers is failed, not run
  forever.
- ``running`` -> ``succeeded``: ``finish`` without an error.
- ``running`` -> ``failed`` (input error): ``finish`` with the error. Bad input fails the same way on
  every attempt, so it is never retried (``retryable`` says which errors are).
- ``running`` -> ``queued`` or ``failed`` (crash): ``after_crash``. The job function raised anything
  else; the queue runs it again while attempts are left (the in-process queue re-queues it itself;
  RQ does through ``Retry``), else it is failed with the error, without internals.
- ``running`` -> lost -> ``queued`` or ``failed``: ``after_crash`` with no exception. RQ notices a
  dead worker when its job's heartbeat expires (maintenance marks the job abandoned and calls the
  failure callback, ``after_rq_failure``); the in-process queue's process is the one that died, so
  the next start finds the job ``running`` and ``begin`` counts the attempt.
- ``queued`` -> deleted: ``DELETE /v1/jobs/{id}`` takes it out of line; a ``running`` job cannot be
  deleted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from cpcnn.service.job_store import JobSpec, JobState, JobStore, utcnow

from cpcnn.errors import InputError, NotFoundError
from cpcnn.schemas import JobStatus, Problem

logger = logging.getLogger(__name__)


class AttemptCounter(Protocol):
    """A durable count of a job's starts, shared by every process that may run the job."""

    def begin(self, job_id: str) -> int:
        """Count one more start of ``job_id`` atomically; returns the count, this start included."""


def max_attempts(retries: int) -> int:
    """Starts allowed for one job: the first and ``retries`` more."""
    return retries + 1


def retryable(exc: BaseException) -> bool:
    """Whether another attempt could succeed: input errors (and a vanished input) never can."""
    return not isinstance(exc, (InputError, NotFoundError))


def recompute_on_resubmit(status: JobStatus) -> bool:
    """An identical submission replaces only a failed job; any other one is returned as it is."""
    return status == JobStatus.FAILED


def unfinished(jobs: JobStore) -> Iterator[str]:
    """Jobs left queued or running (by a process that stopped): they are queued again at start."""
    for job_id in jobs.ids():
        try:
            state = jobs.state(job_id)
        except (NotFoundError, ValueError):
            continue
        if not state.status.finished:
            yield job_id


@dataclass(frozen=True)
class Begun:
    """A job now ``running``, its attempt counted."""

    spec: JobSpec
    state: JobState


def begin(
    jobs: JobStore, job_id: str, *, worker: str, max_attempts: int, counter: AttemptCounter | None = None
) -> Begun | dict[str, Any]:
    """``queued`` -> ``running``, or a summary of why the job does not run (deleted, already
    succeeded, attempts spent)."""
    try:
        spec, state = jobs.spec(job_id), jobs.state(job_id)
    except NotFoundError:
        logger.info("job %s was deleted before it ran", job_id)
        return {"job_id": job_id, "status": "deleted"}
    if state.status == JobStatus.SUCCEEDED and jobs.has_result(job_id):
        return {"job_id": job_id, "status": "succeeded", "n_cells": state.n_cells}
    attempt = counter.begin(job_id) if counter is not None else state.attempts + 1
    if attempt > max_attempts:
        _give_up(jobs, job_id, state, attempts=attempt - 1)
        logger.error("job %s: gave up after %d attempts (the process running it died)", job_id, attempt - 1)
        return {"job_id": job_id, "status": "failed"}
    started = utcnow()
    state = state.model_copy(update={
        "status": JobStatus.RUNNING, "attempts": attempt, "worker": worker,
        "started_at": started, "queue_wait_s": (started - spec.created_at).total_seconds(), "error": None,
    })
    jobs.write_state(job_id, state)  # durable before the job runs: a crash mid-job still counts
    return Begun(spec, state)


def finish(
    jobs: JobStore, job_id: str, state: JobState, began: float, *, error: Problem | None = None,
    n_cells: int | None = None, feature_size: int | None = None,
) -> None:
    """``running`` -> ``succeeded``, or ``failed`` with ``error`` (never retried)."""
    done = state.model_copy(update={
        "status": JobStatus.FAILED if error else JobStatus.SUCCEEDED, "finished_at": utcnow(),
        "run_s": time.perf_counter() - began, "error": error, "n_cells": n_cells, "feature_size": feature_size,
        "completions": state.completions + (0 if error else 1),
    })
    try:
        jobs.write_state(job_id, done)
    except NotFoundError:
        logger.info("job %s was deleted while it ran", job_id)


def after_crash(jobs: JobStore, job_id: str, error: Problem | None, *, final: bool) -> None:
    """``running`` -> ``queued`` when a retry follows, ``failed`` when none does; ``error`` is the
    crash as the client sees it, or None when the worker was lost."""
    try:
        state = jobs.state(job_id)
    except NotFoundError:
        return
    if state.status == JobStatus.SUCCEEDED:
        return
    if error is None:
        error = lost_problem(job_id, attempts=state.attempts if final else None)
    update: dict[str, Any] = {"status": JobStatus.FAILED if final else JobStatus.QUEUED, "error": error}
    if final:
        update["finished_at"] = utcnow()
    try:
        jobs.write_state(job_id, state.model_copy(update=update))
    except NotFoundError:
        return


def crash_is_final(jobs: JobStore, job_id: str, *, crashes: int, max_attempts: int) -> bool:
    """The in-process queue's retry decision after its ``crashes``-th crash of a job in this process.

    The durable count includes starts by earlier processes; the local one ends a job that fails
    before its start could be recorded.
    """
    try:
        durable = jobs.state(job_id).attempts
    except (NotFoundError, ValueError):
        durable = max_attempts
    return max(durable, crashes) >= max_attempts


def after_rq_failure(
    jobs: JobStore, job_id: str, error: Problem | None, *, retries_left: int | None, abandoned: bool
) -> bool:
    """RQ's failure callback: RQ re-queues while ``retries_left``; returns whether none is left.

    ``abandoned`` (RQ's ``AbandonedJobError``): the worker died mid-job, so the job was lost.
    """
    final = not (retries_left and retries_left > 0)
    after_crash(jobs, job_id, None if abandoned else error, final=final)
    return final


def lost_problem(job_id: str, *, attempts: int | None = None) -> Problem:
    """The worker process died while running the job; with ``attempts``, none are left."""
    detail = "the worker running this job stopped"
    if attempts is not None:
        detail = f"gave up after {attempts} attempts: the worker process died while running it"
    return Problem(title="Job failed", status=500, detail=detail, code="worker_lost", instance=f"/v1/jobs/{job_id}")


def _give_up(jobs: JobStore, job_id: str, state: JobState, *, attempts: int) -> None:
    failed = state.model_copy(update={
        "status": JobStatus.FAILED, "attempts": attempts, "finished_at": utcnow(),
        "error": lost_problem(job_id, attempts=attempts),
    })
    try:
        jobs.write_state(job_id, failed)
    except NotFoundError:
        logger.info("job %s was deleted meanwhile", job_id)

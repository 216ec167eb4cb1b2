"""The job state machine, transition by transition, on a real ``JobStore`` (no queue, no model)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from cpcnn.service import lifecycle
from cpcnn.service.job_store import ImageInfo, JobSpec, JobStore

from cpcnn.errors import InputError, NotFoundError, UnavailableError
from cpcnn.schemas import JobStatus, Problem

JOB = "0123456789abcdef0123456789abcdef"


class CountingAttempts:
    """An in-memory ``AttemptCounter`` (Redis's ``INCR`` in production)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def begin(self, job_id: str) -> int:
        self.counts[job_id] = self.counts.get(job_id, 0) + 1
        return self.counts[job_id]


@pytest.fixture
def jobs(tmp_path: Path) -> JobStore:
    store = JobStore(tmp_path)
    spec = JobSpec(id=JOB, model="cnn1", normalization="minmax", n_locations=3,
                   image=ImageInfo(width=64, height=64, channels=["DNA", "RNA", "ER", "AGP", "Mito"]))
    assert store.create(spec, np.zeros((64, 64, 5), np.uint16), np.zeros((3, 2)))
    return store


def _status(jobs: JobStore) -> JobStatus:
    return jobs.state(JOB).status


def test_begin_counts_the_attempt_before_the_job_runs(jobs: JobStore) -> None:
    assert _status(jobs) == JobStatus.QUEUED
    begun = lifecycle.begin(jobs, JOB, worker="w", max_attempts=2)
    assert isinstance(begun, lifecycle.Begun)
    state = jobs.state(JOB)
    assert (state.status, state.attempts, state.worker) == (JobStatus.RUNNING, 1, "w")


def test_attempts_spent_fail_the_job_as_lost_without_running_it(jobs: JobStore) -> None:
    counter = CountingAttempts()
    for _ in range(2):
        assert isinstance(lifecycle.begin(jobs, JOB, worker="w", max_attempts=2, counter=counter), lifecycle.Begun)
    assert lifecycle.begin(jobs, JOB, worker="w", max_attempts=2, counter=counter) == {"job_id": JOB, "status": "failed"}
    state = jobs.state(JOB)
    assert state.status == JobStatus.FAILED and state.error is not None
    assert state.error.code == "worker_lost" and "2 attempts" in state.error.detail


def test_finish_succeeds_and_a_succeeded_job_is_not_run_again(jobs: JobStore) -> None:
    begun = lifecycle.begin(jobs, JOB, worker="w", max_attempts=1)
    assert isinstance(begun, lifecycle.Begun)
    jobs.write_result(JOB, np.ones((3, 4), np.float32), np.zeros((3, 2)))
    lifecycle.finish(jobs, JOB, begun.state, time.perf_counter(), n_cells=3, feature_size=4)
    assert _status(jobs) == JobStatus.SUCCEEDED and jobs.state(JOB).completions == 1
    assert lifecycle.begin(jobs, JOB, worker="w", max_attempts=1)["status"] == "succeeded"  # type: ignore[index]
    lifecycle.after_crash(jobs, JOB, None, final=True)  # a late failure report never undoes success
    assert _status(jobs) == JobStatus.SUCCEEDED


def test_input_errors_are_never_retried() -> None:
    assert not lifecycle.retryable(InputError("bad image"))
    assert not lifecycle.retryable(NotFoundError("inputs gone"))
    assert lifecycle.retryable(RuntimeError("onnxruntime crashed"))
    assert lifecycle.retryable(UnavailableError("redis", retry_after_s=1))


def test_crash_requeues_while_attempts_are_left_then_fails(jobs: JobStore) -> None:
    error = Problem(title="Job failed", status=500, detail="worker error (RuntimeError)", code="job_failed")
    lifecycle.begin(jobs, JOB, worker="w", max_attempts=2)
    assert not lifecycle.crash_is_final(jobs, JOB, crashes=1, max_attempts=2)
    lifecycle.after_crash(jobs, JOB, error, final=False)
    assert _status(jobs) == JobStatus.QUEUED
    lifecycle.begin(jobs, JOB, worker="w", max_attempts=2)
    assert lifecycle.crash_is_final(jobs, JOB, crashes=1, max_attempts=2)  # the durable count says 2
    lifecycle.after_crash(jobs, JOB, error, final=True)
    state = jobs.state(JOB)
    assert state.status == JobStatus.FAILED and state.error == error and state.finished_at is not None


def test_rq_failure_of_an_abandoned_job_is_reported_as_lost(jobs: JobStore) -> None:
    lifecycle.begin(jobs, JOB, worker="w", max_attempts=3)
    crash = Problem(title="Job failed", status=500, detail="AbandonedJobError", code="job_failed")
    assert not lifecycle.after_rq_failure(jobs, JOB, crash, retries_left=1, abandoned=True)
    assert _status(jobs) == JobStatus.QUEUED
    assert lifecycle.after_rq_failure(jobs, JOB, crash, retries_left=0, abandoned=True)
    state = jobs.state(JOB)
    assert state.status == JobStatus.FAILED and state.error is not None and state.error.code == "worker_lost"


def test_only_a_failed_job_is_recomputed_on_resubmission() -> None:
    assert [s for s in JobStatus if lifecycle.recompute_on_resubmit(s)] == [JobStatus.FAILED]


def test_unfinished_jobs_are_picked_up_again(jobs: JobStore) -> None:
    assert list(lifecycle.unfinished(jobs)) == [JOB]
    lifecycle.begin(jobs, JOB, worker="w", max_attempts=1)
    assert list(lifecycle.unfinished(jobs)) == [JOB]  # running when its process stopped
    lifecycle.after_crash(jobs, JOB, None, final=True)
    assert list(lifecycle.unfinished(jobs)) == []

"""The service at a glance for dashboards: live workers with the queue, and recent throughput.

The same worker records ``/readyz`` shows to callers with the key, as a resource of their own; the
throughput is read from the job store (finish time and cells of each job that finished in the window),
so it is the same for every API replica sharing the data directory.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Literal

from cpcnn.service.app.deps import ApiKeyDep, JobStoreDep, QueueDep
from cpcnn.service.app.problems import problem_responses
from cpcnn.service.job_store import JobStore
from cpcnn.service.queue import JobQueue
from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from cpcnn.errors import NotFoundError, UnavailableError
from cpcnn.schemas import Throughput, ThroughputBucket, WorkerList

router = APIRouter(tags=["status"], dependencies=[ApiKeyDep])

#: Most jobs whose state one throughput window reads.
MAX_THROUGHPUT_JOBS = 5000


@router.get("/workers", response_model=WorkerList, summary="Live workers and the queue depth",
            responses=problem_responses(401))
async def list_workers(queue: QueueDep) -> WorkerList:
    return await run_in_threadpool(_workers, queue)


def _workers(queue: JobQueue) -> WorkerList:
    kind: Literal["embedded", "redis"] = "embedded" if queue.kind == "embedded" else "redis"
    try:
        workers, depth = queue.workers(), queue.depth()
    except UnavailableError:
        return WorkerList(data=[], count=0, queue=kind, queue_depth=None)
    return WorkerList(data=workers, count=len(workers), queue=kind, queue_depth=depth)


@router.get("/throughput", response_model=Throughput, summary="Cells embedded per minute, last minutes",
            responses=problem_responses(401, 422))
async def throughput(
    jobs: JobStoreDep,
    minutes: Annotated[int, Query(ge=1, le=60, description="window length")] = 10,
) -> Throughput:
    return await run_in_threadpool(measure_throughput, jobs, minutes=minutes)


def measure_throughput(jobs: JobStore, *, minutes: int, bucket_s: int = 60) -> Throughput:
    """Per-minute cells of succeeded jobs, by finish time, over the last ``minutes`` (the last bucket is now)."""
    now = time.time()
    first = (int(now) // bucket_s - minutes + 1) * bucket_s
    cells, counts = [0] * minutes, [0] * minutes
    for job_id in jobs.recent(limit=MAX_THROUGHPUT_JOBS, since=first):
        try:
            state = jobs.state(job_id)
        except (NotFoundError, ValueError):
            continue
        if state.finished_at is None or state.n_cells is None:
            continue
        slot = int((state.finished_at.timestamp() - first) // bucket_s)
        if 0 <= slot < minutes:
            cells[slot] += state.n_cells
            counts[slot] += 1
    elapsed = max(1.0, now - first)
    buckets = [
        ThroughputBucket(start=datetime.fromtimestamp(first + i * bucket_s, UTC), cells=cells[i], jobs=counts[i],
                         cells_per_s=cells[i] / (bucket_s if i < minutes - 1 else max(1.0, now - first - i * bucket_s)))
        for i in range(minutes)
    ]
    return Throughput(bucket_s=bucket_s, buckets=buckets, cells_per_s=sum(cells) / elapsed)

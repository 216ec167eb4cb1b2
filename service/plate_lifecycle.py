"""A plate job's state machine: every change to a plate's sites and to the plate is made here.

A plate is a record (``PlateStore``) plus one queue job per site (``<plate id>-<index>``, task kind
``plate_site``). Site states are facts on disk, never a status field: *done* (its cells file exists),
*failed* (its failure record exists), *pending* otherwise. The plate's own state follows from them and
from two markers, ``cancelled`` and ``finished.json``.

Transitions (function that makes it, who calls it):

- submit -> every site pending: ``PlateStore.create`` then ``enqueue_sites`` from the API; the
  ``queued`` marker is written once every site is in line, so an API stopped half-way finishes the
  enqueueing at its next start (``resume``).
- pending -> running: ``begin_site``, by whichever worker takes the site job. Sites of a cancelled or
  deleted plate, and sites already done or failed, are not run (a retry or a duplicate after a restart
  is harmless). The start is counted durably before the site runs, as for embedding jobs (Redis
  ``INCR`` in RQ mode, else a count file), and a site past ``max_attempts`` is failed, not rerun.
- running -> done: the worker writes the cells file (``PlateOutput.write_site`` renames it into place).
- running -> failed: ``site_failed`` for input errors (never retried: ``lifecycle.retryable``), or
  ``after_site_crash`` with ``final`` once the queue's retries are spent (or the worker died).
- plate -> finished: ``finish_if_complete`` after every resolved site. When no site is pending, the
  process that takes the finishing lock (atomic ``O_EXCL`` create) writes sites.parquet, wells.parquet
  and run.json (``PlateOutput.finish``), then ``finished.json``; any other process returns at once, so
  the plate is finished exactly once however many workers race. ``resume`` at API start finishes a plate
  whose finisher died.
- plate -> cancelled: ``cancel`` (``DELETE /v1/plates/{id}``) writes the marker and takes pending sites
  out of line; done sites stay. Submitting the same plate again resumes it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from cpcnn.service.job_store import utcnow
from cpcnn.service.lifecycle import AttemptCounter
from cpcnn.service.plate_store import PlateSpec, PlateStore, site_job_id
from cpcnn.service.queue import JobQueue

from cpcnn.errors import NotFoundError, UnavailableError
from cpcnn.plates.sites import SiteSpec

logger = logging.getLogger(__name__)

#: Writes the plate tables of a plate whose sites are all resolved (``plate_tasks.write_plate_tables``).
Finisher = Callable[[PlateStore, PlateSpec], dict[str, Any]]


def enqueue_sites(plates: PlateStore, queue: JobQueue, plate_id: str, *, fresh: bool = False) -> int:
    """Put the plate's unresolved sites in line, skipping those already there (``fresh``: a plate just
    created, none can be); then mark the plate queued. Returns how many were put in line."""
    spec = plates.spec(plate_id)
    queued = 0
    for index in plates.unresolved(plate_id):
        job_id = site_job_id(plate_id, index)
        if fresh or not queue.is_queued(job_id):
            queue.enqueue(job_id, model=spec.model, kind="plate_site")
            queued += 1
    plates.mark_queued(plate_id)
    return queued


def begin_site(
    plates: PlateStore, plate_id: str, index: int, *, max_attempts: int, counter: AttemptCounter | None,
    finisher: Finisher,
) -> tuple[PlateSpec, SiteSpec] | dict[str, Any]:
    """pending -> running, or a summary of why the site does not run."""
    job_id = site_job_id(plate_id, index)
    try:
        spec, sites = plates.spec(plate_id), plates.sites(plate_id)
    except NotFoundError:
        return {"job_id": job_id, "status": "deleted"}
    if not 0 <= index < len(sites):
        return {"job_id": job_id, "status": "deleted"}
    site = sites[index]
    if plates.is_cancelled(plate_id):
        return {"job_id": job_id, "status": "cancelled"}
    if plates.is_done(plate_id, site) or plates.failure(plate_id, site) is not None:
        finish_if_complete(plates, plate_id, finisher)
        return {"job_id": job_id, "status": "done"}
    attempt = counter.begin(job_id) if counter is not None else plates.count_attempt(plate_id, site)
    if attempt > max_attempts:
        site_failed(plates, plate_id, site, lost_reason(attempt - 1), finisher)
        return {"job_id": job_id, "status": "failed"}
    return spec, site


def site_failed(plates: PlateStore, plate_id: str, site: SiteSpec, reason: str, finisher: Finisher) -> None:
    """running -> failed (for good); the plate may now be complete."""
    logger.info("plate %s: %s failed: %s", plate_id, site.describe(), reason)
    try:
        plates.record_failure(plate_id, site, reason)
    except (NotFoundError, FileNotFoundError):
        return
    finish_if_complete(plates, plate_id, finisher)


def after_site_crash(
    plates: PlateStore, plate_id: str, index: int, reason: str | None, *, final: bool, finisher: Finisher
) -> None:
    """The site job raised (or its worker died, ``reason=None``): failed when no retry follows."""
    if not final:
        return
    try:
        site = plates.sites(plate_id)[index]
    except (NotFoundError, IndexError):
        return
    if plates.is_done(plate_id, site):
        return
    site_failed(plates, plate_id, site, reason or lost_reason(None), finisher)


def lost_reason(attempts: int | None) -> str:
    if attempts is None:
        return "the worker running this site stopped"
    return f"gave up after {attempts} attempts: the worker process died while running it"


def finish_if_complete(plates: PlateStore, plate_id: str, finisher: Finisher) -> bool:
    """Write the plate tables once no site is pending; True when this call wrote them."""
    try:
        if plates.is_finished(plate_id) or plates.is_cancelled(plate_id) or plates.unresolved(plate_id):
            return False
        if not plates.try_lock_finish(plate_id):
            return False
    except NotFoundError:
        return False
    try:
        if plates.is_finished(plate_id):  # finished by the previous holder of the lock
            return False
        summary = finisher(plates, plates.spec(plate_id))
        plates.mark_finished(plate_id, {"finished_at": utcnow().isoformat(), **summary})
        logger.info("plate %s finished: %s", plate_id, summary)
        return True
    finally:
        plates.release_finish(plate_id)


def cancel(plates: PlateStore, queue: JobQueue, plate_id: str) -> None:
    """Mark the plate cancelled and take its pending sites out of line (done sites are kept)."""
    spec = plates.spec(plate_id)
    plates.cancel(plate_id)
    for index in plates.unresolved(plate_id):
        queue.cancel(site_job_id(plate_id, index), model=spec.model)


def resume(plates: PlateStore, queue: JobQueue, finisher: Finisher) -> None:
    """At API start: put back in line the pending sites of unfinished plates (the in-process queue lost
    them; in RQ mode sites still in Redis are skipped), and finish plates whose finisher died."""
    for plate_id in plates.ids():
        try:
            if plates.is_finished(plate_id) or plates.is_cancelled(plate_id):
                continue
            if plates.unresolved(plate_id):
                n = enqueue_sites(plates, queue, plate_id)
                if n:
                    logger.info("plate %s: %d pending sites put back in line", plate_id, n)
            else:
                finish_if_complete(plates, plate_id, finisher)
        except (NotFoundError, UnavailableError, ValueError, OSError) as exc:
            logger.warning("plate %s could not be resumed: %s", plate_id, exc)

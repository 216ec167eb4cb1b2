"""Jobs on disk: the shared data directory holds every payload and result, Redis only ids.

Layout, one folder per job id (a content hash, so the path is safe to build from it)::

    jobs/<id>/request.json   JobSpec: what was asked (immutable)
    jobs/<id>/state.json     JobState: where it is (rewritten atomically by the API and workers)
    jobs/<id>/image.npy      (H, W, C) pixels in model channel order; removed once the job succeeds
    jobs/<id>/centers.npy    (N, 2) float64 x, y; absent when nuclei are to be detected
    jobs/<id>/objects.npy    (N,) int64 object numbers of the uploaded locations (result rows keep them)
    jobs/<id>/features.npy   (N, D) float32 result, rows in location order
    jobs/<id>/cells.npy      (N, 2) float64 centres of the result rows

Every write goes to a temporary dot-name first, is fsynced and renamed into place (then the folder
is fsynced), so readers on other machines never see half a file and a crash never leaves one.
Temporaries a crash left behind are removed when a store is opened (``cpcnn.io.durable``).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from cpcnn._types import F32Array, F64Array, I64Array
from cpcnn.errors import NotFoundError
from cpcnn.io.durable import STALE_TEMPORARY_S, remove_stale, replace_durably, write_bytes_durably
from cpcnn.locations import Locations
from cpcnn.schemas import ImageInfo, JobLinks, JobPublic, JobStatus, Problem

_JOB_ID = re.compile(r"[0-9a-f]{32}")


def utcnow() -> datetime:
    return datetime.now(UTC)


class JobSpec(BaseModel):
    """What the client asked for; written once at submit."""

    id: str
    model: str
    normalization: str
    metadata: dict[str, str] = Field(default_factory=dict)
    detect_nuclei: bool = False
    n_locations: int | None = None
    max_cells: int | None = Field(default=None, description="cells the job may have (limit when it was submitted)")
    image: ImageInfo
    created_at: datetime = Field(default_factory=utcnow)


class JobState(BaseModel):
    """Where the job is; the single source of truth for its status."""

    status: JobStatus = JobStatus.QUEUED
    attempts: int = 0
    completions: int = 0
    worker: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    n_cells: int | None = None
    feature_size: int | None = None
    queue_wait_s: float | None = None
    run_s: float | None = None
    error: Problem | None = None


def check_job_id(job_id: str) -> str:
    """Job ids are 32 hex digits; anything else cannot exist (and never reaches the filesystem)."""
    if not _JOB_ID.fullmatch(job_id):
        raise NotFoundError(f"job {job_id!r} does not exist (ids are 32 hexadecimal digits)")
    return job_id


class JobStore:
    """Job folders under ``root/jobs``; opening one removes crash leftovers older than ``stale_s``."""

    def __init__(self, root: Path, *, stale_s: float = STALE_TEMPORARY_S) -> None:
        self.root = Path(root)
        self.jobs_dir = self.root / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        remove_stale(self.jobs_dir, max_age_s=stale_s, depth=1)

    def folder(self, job_id: str) -> Path:
        return self.jobs_dir / check_job_id(job_id)

    def exists(self, job_id: str) -> bool:
        return (self.folder(job_id) / "state.json").is_file()

    def create(self, spec: JobSpec, image: np.ndarray, cells: Locations | F64Array | None) -> bool:
        """Write a new job folder atomically; False if a job with this id already exists."""
        target = self.folder(spec.id)
        if target.exists():
            return False
        staging = Path(tempfile.mkdtemp(prefix=f".{spec.id}-", dir=self.jobs_dir))
        try:
            np.save(staging / "image.npy", image, allow_pickle=False)
            if isinstance(cells, Locations):
                np.save(staging / "centers.npy", cells.centers, allow_pickle=False)
                np.save(staging / "objects.npy", cells.object_numbers, allow_pickle=False)
            elif cells is not None:
                np.save(staging / "centers.npy", cells, allow_pickle=False)
            (staging / "request.json").write_text(spec.model_dump_json())
            (staging / "state.json").write_text(JobState().model_dump_json())
            try:
                replace_durably(staging, target, overwrite=False)
            except OSError:  # another request created the same job first
                return False
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return True

    def spec(self, job_id: str) -> JobSpec:
        return JobSpec.model_validate_json(self._read(job_id, "request.json"))

    def state(self, job_id: str) -> JobState:
        return JobState.model_validate_json(self._read(job_id, "state.json"))

    def write_state(self, job_id: str, state: JobState) -> None:
        folder = self.folder(job_id)
        if not folder.is_dir():
            raise NotFoundError(f"job {job_id} was deleted")
        write_bytes_durably(folder / "state.json", state.model_dump_json().encode())

    def public(self, job_id: str, *, prefix: str = "/v1") -> JobPublic:
        """Spec and state merged into the wire model."""
        spec, state = self.spec(job_id), self.state(job_id)
        return JobPublic(
            id=spec.id,
            status=state.status,
            model=spec.model,
            normalization=spec.normalization,
            metadata=spec.metadata,
            image=spec.image,
            detect_nuclei=spec.detect_nuclei,
            n_locations=spec.n_locations,
            n_cells=state.n_cells,
            feature_size=state.feature_size,
            attempts=state.attempts,
            created_at=spec.created_at,
            started_at=state.started_at,
            finished_at=state.finished_at,
            queue_wait_s=state.queue_wait_s,
            run_s=state.run_s,
            error=state.error,
            links=JobLinks(self_=f"{prefix}/jobs/{spec.id}", result=f"{prefix}/jobs/{spec.id}/result"),
        )

    def load_image(self, job_id: str) -> F32Array:
        path = self.folder(job_id) / "image.npy"
        if not path.is_file():
            raise NotFoundError(f"job {job_id} has no input image (deleted, or already finished)")
        return np.load(path, allow_pickle=False).astype(np.float32, copy=False)

    def load_centers(self, job_id: str) -> F64Array | None:
        path = self.folder(job_id) / "centers.npy"
        return np.load(path, allow_pickle=False) if path.is_file() else None

    def write_result(self, job_id: str, features: F32Array, centers: F64Array) -> None:
        folder = self.folder(job_id)
        for name, array in (("cells.npy", centers), ("features.npy", features)):
            with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{name}-", delete=False) as handle:
                np.save(handle, array, allow_pickle=False)
            replace_durably(Path(handle.name), folder / name)

    def features_path(self, job_id: str) -> Path:
        return self.folder(job_id) / "features.npy"

    def load_result(self, job_id: str) -> tuple[F32Array, Locations]:
        """Features and the cells they belong to: centres, and object numbers (uploaded ones, else
        the 1-based row positions, e.g. for detected nuclei)."""
        folder = self.folder(job_id)
        try:
            features, centers = np.load(folder / "features.npy"), np.load(folder / "cells.npy")
        except FileNotFoundError as exc:
            raise NotFoundError(f"job {job_id} has no result on disk") from exc
        return features, Locations.numbered(centers, read_object_numbers(folder, len(centers)))

    def has_result(self, job_id: str) -> bool:
        return self.features_path(job_id).is_file()

    def drop_inputs(self, job_id: str) -> None:
        """The image is by far the largest file; once features exist it is not needed."""
        (self.folder(job_id) / "image.npy").unlink(missing_ok=True)

    def delete(self, job_id: str) -> None:
        folder = self.folder(job_id)
        if not folder.is_dir():
            raise NotFoundError(f"job {job_id} does not exist")
        trash = self.jobs_dir / f".deleted-{job_id}-{os.getpid()}-{time.monotonic_ns()}"
        os.rename(folder, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def ids(self) -> list[str]:
        return sorted(p.name for p in self.jobs_dir.iterdir() if _JOB_ID.fullmatch(p.name))

    def recent(self, *, limit: int, since: float | None = None) -> list[str]:
        """Ids of the ``limit`` jobs whose state changed last, newest first (optionally only those changed
        after the epoch time ``since``); one ``stat`` per job, no file read."""
        stamped: list[tuple[float, str]] = []
        for job_id in self.ids():
            try:
                changed = (self.jobs_dir / job_id / "state.json").stat().st_mtime
            except OSError:
                continue  # deleted meanwhile
            if since is None or changed >= since:
                stamped.append((changed, job_id))
        stamped.sort(reverse=True)
        return [job_id for _, job_id in stamped[:limit]]

    def prune(self, *, max_age_s: float) -> int:
        """Delete finished jobs older than ``max_age_s``; returns how many went."""
        cutoff = time.time() - max_age_s
        removed = 0
        for job_id in self.ids():
            try:
                state = self.state(job_id)
                if state.status.finished and (self.folder(job_id) / "state.json").stat().st_mtime < cutoff:
                    self.delete(job_id)
                    removed += 1
            except (NotFoundError, OSError, ValueError):
                continue
        return removed

    def _read(self, job_id: str, name: str) -> str:
        try:
            return (self.folder(job_id) / name).read_text()
        except FileNotFoundError as exc:
            raise NotFoundError(f"job {job_id} does not exist") from exc


def read_object_numbers(folder: Path, n_cells: int) -> I64Array:
    """The (N,) object numbers of a job's result rows: the uploaded ones (``objects.npy``), else 1..N
    (positions, e.g. for detected nuclei). The one rule for every result encoding."""
    objects = folder / "objects.npy"
    numbers = np.load(objects, allow_pickle=False) if objects.is_file() else None
    if numbers is None or numbers.shape != (n_cells,):
        return np.arange(1, n_cells + 1, dtype=np.int64)  # never mislabel cells (cannot happen for uploads)
    return numbers.astype(np.int64, copy=False)

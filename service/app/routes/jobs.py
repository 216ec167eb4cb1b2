"""Embedding jobs: submit (202 + Location), status, result by content negotiation, delete."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Literal

from cpcnn.service import lifecycle
from cpcnn.service.app.deps import ApiKeyDep, JobDep, JobStoreDep, ModelStoreDep, QueueDep, SettingsDep
from cpcnn.service.app.intake import Submission, job_id_for, prepare, read_part, site_metadata
from cpcnn.service.app.problems import problem_responses
from cpcnn.service.app.results import StoredResult, json_chunks, negotiate, parquet_file
from cpcnn.service.config import ApiSettings
from cpcnn.service.job_store import JobStore
from cpcnn.service.queue import JobQueue
from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile
from fastapi.responses import FileResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile as StarletteUploadFile

from cpcnn._types import CHANNELS
from cpcnn.errors import (
    ConflictError,
    InputError,
    NotFoundError,
    UnavailableError,
    UnsupportedMedia,
)
from cpcnn.manifest import ModelManifest
from cpcnn.model_store import ModelStore
from cpcnn.schemas import (
    MEDIA_JSON,
    MEDIA_NPY,
    MEDIA_PARQUET,
    RESULT_FORMATS,
    CellsResult,
    JobList,
    JobPublic,
    JobStatus,
)

router = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=[ApiKeyDep])

#: Longest a submit may block with ``wait`` (seconds).
MAX_WAIT_S = 300.0
_FILE_PARTS = {*CHANNELS, "image", "locations"}
_FORM_FIELDS = {"channel_order", "plate", "well", "site", "model", "normalization", "detect_nuclei"}
#: Most jobs one listing returns.
MAX_LIST = 200

@router.post(
    "",
    status_code=202,
    response_model=JobPublic,
    summary="Submit one field of view for embedding",
    responses={200: {"model": JobPublic, "description": "the job finished within `wait`"},
               **problem_responses(400, 401, 413, 415, 422, 503)},
)
async def create_job(
    request: Request,
    response: Response,
    settings: SettingsDep,
    models: ModelStoreDep,
    jobs: JobStoreDep,
    queue: QueueDep,
    dna: Annotated[UploadFile | None, File(alias="DNA", description="DNA channel (e.g. Hoechst): TIFF or PNG")] = None,
    rna: Annotated[UploadFile | None, File(alias="RNA", description="RNA channel (e.g. SYTO14): TIFF or PNG")] = None,
    er: Annotated[UploadFile | None, File(alias="ER", description="ER channel (concanavalin A): TIFF or PNG")] = None,
    agp: Annotated[UploadFile | None, File(alias="AGP", description="AGP channel (phalloidin + WGA): TIFF or PNG")] = None,
    mito: Annotated[UploadFile | None, File(alias="Mito", description="Mito channel (MitoTracker): TIFF or PNG")] = None,
    image: Annotated[UploadFile | None, File(description="all channels in one multi-page or 3-D TIFF")] = None,
    channel_order: Annotated[str | None, Form(description="planes of `image` as stored, e.g. DNA,RNA,ER,AGP,Mito")] = None,
    locations: Annotated[UploadFile | str | None, File(description="nuclei CSV (Nuclei_Location_Center_X/Y) or JSON")] = None,
    plate: Annotated[str, Form(max_length=256)] = "",
    well: Annotated[str, Form(max_length=256)] = "",
    site: Annotated[str, Form(max_length=256)] = "",
    model: Annotated[str | None, Form(description="model name; the server's default when omitted")] = None,
    normalization: Annotated[Literal["minmax", "minmax_paper"] | None, Form()] = None,
    detect_nuclei: Annotated[bool, Form(description="find nuclei on the DNA channel when no locations are sent")] = False,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="block up to this many seconds for the result")] = 0,
) -> JobPublic:
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise UnsupportedMedia(f"submit jobs as multipart/form-data, not {content_type or 'an untyped body'}")
    form = await request.form()
    unknown = sorted(k for k in form if k not in _FILE_PARTS | _FORM_FIELDS)
    if unknown:
        raise InputError(f"unknown form part(s) {', '.join(unknown)}; channels are {', '.join(CHANNELS)}")
    parts = {"DNA": dna, "RNA": rna, "ER": er, "AGP": agp, "Mito": mito}
    sub = Submission(
        model=model or settings.default_model,
        channels={name: await read_part(part, name, settings.limits.max_part_bytes)
                  for name, part in parts.items() if part is not None},
        stack=await read_part(image, "image", settings.limits.max_part_bytes) if image is not None else None,
        channel_order=channel_order,
        locations=await _read_locations(locations, settings.limits.max_part_bytes),
        metadata=site_metadata(plate, well, site),
        normalization=normalization,
        detect_nuclei=detect_nuclei,
    )
    try:
        manifest = models.get(sub.model).manifest
    except (NotFoundError, InputError) as exc:
        known = ", ".join(m.name for m in await run_in_threadpool(models.list)) or "none"
        raise InputError(f"unknown model {sub.model!r} (known: {known}); GET /v1/models lists them") from exc
    job_id = await run_in_threadpool(job_id_for, sub)
    if not _reuse_existing(jobs, job_id):
        await _create(settings, jobs, queue, sub, job_id, manifest)
    response.headers["Location"] = f"/v1/jobs/{job_id}"
    job = await _wait(jobs, job_id, wait)
    if job.status.finished:
        response.status_code = 200
    return job


@router.get("", response_model=JobList, summary="Recent jobs, newest first", responses=problem_responses(401, 422))
async def list_jobs(
    jobs: JobStoreDep,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST, description="most jobs to return")] = 20,
) -> JobList:
    return await run_in_threadpool(_recent_jobs, jobs, limit)


def _recent_jobs(jobs: JobStore, limit: int) -> JobList:
    listed = []
    for job_id in jobs.recent(limit=limit):
        try:
            listed.append(jobs.public(job_id))
        except (NotFoundError, ValueError):
            continue  # deleted (or being written) meanwhile
    return JobList(data=listed, count=len(listed), total=len(jobs.ids()))


@router.get("/{job_id}", response_model=JobPublic, summary="Job status", responses=problem_responses(401, 404))
async def get_job(
    job: JobDep,
    jobs: JobStoreDep,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="block up to this many seconds until it finishes")] = 0,
) -> JobPublic:
    return await _wait(jobs, job.id, wait) if wait else job


@router.get(
    "/{job_id}/result",
    summary="Job result: JSON, Parquet or .npy (Accept header or ?format=)",
    response_model=CellsResult,
    responses={
        200: {"content": {MEDIA_PARQUET: {"schema": {"type": "string", "format": "binary"}},
                          MEDIA_NPY: {"schema": {"type": "string", "format": "binary"}}},
              "description": "one row per cell, in location order"},
        **problem_responses(401, 404, 406),
        409: problem_responses(422)[422] | {"description": "the job has not succeeded (yet)"},
    },
)
async def get_result(
    job: JobDep,
    request: Request,
    jobs: JobStoreDep,
    models: ModelStoreDep,
    format: Annotated[Literal["json", "parquet", "npy"] | None, Query(description="overrides Accept")] = None,
) -> Response:
    job_id = job.id
    if job.status == JobStatus.FAILED:
        detail = job.error.detail if job.error else "unknown error"
        raise ConflictError(f"job {job_id} failed: {detail}")
    if job.status != JobStatus.SUCCEEDED:
        raise ConflictError(f"job {job_id} is {job.status.value}; poll GET /v1/jobs/{job_id} until it has succeeded")
    media = RESULT_FORMATS[format] if format else negotiate(request.headers.get("accept"))
    manifest_prefix = await run_in_threadpool(_feature_prefix, models, job.model)
    if media == MEDIA_NPY:
        return FileResponse(jobs.features_path(job_id), media_type=MEDIA_NPY,
                            filename=f"{job_id}-features.npy")
    stored = StoredResult(jobs.folder(job_id))
    try:
        if media == MEDIA_PARQUET:
            path = await run_in_threadpool(parquet_file, stored, job, manifest_prefix)
            return FileResponse(path, media_type=MEDIA_PARQUET, filename=f"{job_id}-cells.parquet")
        features, centers, object_numbers = await run_in_threadpool(stored.open)
    except FileNotFoundError as exc:
        raise NotFoundError(f"job {job_id} has no result on disk") from exc
    return StreamingResponse(json_chunks(job, manifest_prefix, features, centers, object_numbers), media_type=MEDIA_JSON)


@router.delete("/{job_id}", status_code=204, summary="Delete a job and its files",
               responses=problem_responses(401, 404) | {409: {"description": "the job is running"}})
async def delete_job(job: JobDep, jobs: JobStoreDep, queue: QueueDep) -> Response:
    if job.status == JobStatus.RUNNING:
        raise ConflictError(f"job {job.id} is running; delete it once it has finished")
    if job.status == JobStatus.QUEUED:
        await run_in_threadpool(queue.cancel, job.id, model=job.model)
    await run_in_threadpool(jobs.delete, job.id)
    return Response(status_code=204)


async def _read_locations(locations: UploadFile | str | None, limit: int) -> bytes | None:
    if locations is None:
        return None
    if isinstance(locations, StarletteUploadFile):
        return await read_part(locations, "locations", limit)
    return str(locations).encode()


def _feature_prefix(models: ModelStore, model: str) -> str:
    try:
        return models.get(model).manifest.feature_prefix
    except NotFoundError:
        return "efficientnet"


def _reuse_existing(jobs: JobStore, job_id: str) -> bool:
    """The same upload again: keep the job unless the lifecycle says to recompute it."""
    if not jobs.exists(job_id):
        return False
    if not lifecycle.recompute_on_resubmit(jobs.state(job_id).status):
        return True
    jobs.delete(job_id)
    return False


async def _create(
    settings: ApiSettings, jobs: JobStore, queue: JobQueue, sub: Submission, job_id: str, manifest: ModelManifest
) -> None:
    depth = await run_in_threadpool(queue.depth, sub.model)
    if depth >= settings.queue.max_depth:
        raise UnavailableError(
            f"{depth} jobs are waiting, at the limit of {settings.queue.max_depth}; retry later",
            retry_after_s=settings.queue.retry_after_s,
        )
    spec, pixels, cells = await run_in_threadpool(prepare, sub, job_id, manifest, settings.limits)
    if not await run_in_threadpool(jobs.create, spec, pixels, cells):
        return  # an identical request created it a moment ago
    try:
        await run_in_threadpool(queue.enqueue, job_id, model=sub.model)
    except BaseException:
        jobs.delete(job_id)  # never leave a job on disk that no queue knows about
        raise


async def _wait(jobs: JobStore, job_id: str, wait_s: float) -> JobPublic:
    deadline = time.monotonic() + wait_s
    delay = 0.005
    while True:
        job = await run_in_threadpool(jobs.public, job_id)
        if job.status.finished or time.monotonic() >= deadline:
            return job
        await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 1.5, 0.1)

"""Plate jobs: a LoadData CSV on the shared volume -> one queue job per site -> plate tables.

Submit (202 + Location), list, progress, cancel (DELETE) and downloads of the plate tables and of each
site's cells. Every state change is made by ``cpcnn.service.plate_lifecycle``.
"""

from __future__ import annotations

import asyncio
import io
import time
from functools import partial
from pathlib import Path
from typing import Annotated, Literal

from cpcnn.service import plate_lifecycle
from cpcnn.service.app.deps import ApiKeyDep, ModelStoreDep, PlateStoreDep, QueueDep, SettingsDep
from cpcnn.service.app.intake import read_part
from cpcnn.service.app.plate_intake import PlateRequest, parse_channels, prepare_plate
from cpcnn.service.app.problems import problem_responses
from cpcnn.service.plate_paths import AllowedRoots
from cpcnn.service.plate_store import PlateStore, check_plate_id
from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile as StarletteUploadFile

from cpcnn.errors import ConflictError, InputError, NotFoundError
from cpcnn.schemas import MEDIA_PARQUET, PlateList, PlatePublic, PlateStatus

router = APIRouter(prefix="/plates", tags=["plates"], dependencies=[ApiKeyDep])

MAX_WAIT_S = 300.0
MEDIA_CSV = "text/csv"
_TABLE_FILE = {200: {"content": {MEDIA_PARQUET: {"schema": {"type": "string", "format": "binary"}},
                                 MEDIA_CSV: {"schema": {"type": "string"}}},
                     "description": "the table as Parquet (default) or CSV"}}
TableFormat = Annotated[Literal["parquet", "csv"], Query(description="Parquet (default) or CSV")]


@router.post(
    "",
    status_code=202,
    response_model=PlatePublic,
    summary="Profile a whole plate: a LoadData CSV whose files lie on the volume the service shares",
    responses={200: {"model": PlatePublic, "description": "the same plate was submitted before and has finished"},
               **problem_responses(400, 401, 413, 415, 422, 503)},
)
async def create_plate(
    request: Request,
    response: Response,
    settings: SettingsDep,
    models: ModelStoreDep,
    plates: PlateStoreDep,
    queue: QueueDep,
    load_data: Annotated[UploadFile | str, File(
        description="the LoadData CSV (uploaded; then its paths must be absolute) or its path on the shared volume")],
    model: Annotated[str | None, Form(description="model name; the server's default when omitted")] = None,
    locations: Annotated[str | None, Form(description="nuclei table (CSV, Parquet, SQLite) or DeepProfiler "
                                                       "locations folder on the shared volume")] = None,
    detect_nuclei: Annotated[bool, Form(description="find nuclei on each site's DNA channel instead")] = False,
    illum: Annotated[bool, Form(description="divide by the CSV's illumination functions (FileName_Illum*)")] = False,
    platemap: Annotated[str | None, Form(description="platemap CSV (Metadata_Well, ...) on the shared volume, "
                                                      "joined to the well profiles")] = None,
    channels: Annotated[str | None, Form(description="LoadData names of the model channels, e.g. "
                                                      "DNA=OrigHoechst,RNA=OrigSyto (default Orig<Channel>)")] = None,
) -> PlatePublic:
    AllowedRoots(settings.plates.roots).require_enabled()
    _require_form(request)
    name = model or settings.default_model
    try:
        manifest = models.get(name).manifest
    except (NotFoundError, InputError) as exc:
        known = ", ".join(m.name for m in await run_in_threadpool(models.list)) or "none"
        raise InputError(f"unknown model {name!r} (known: {known}); GET /v1/models lists them") from exc
    if isinstance(load_data, StarletteUploadFile):
        path, data = None, await read_part(load_data, "load_data", settings.plates.max_load_data_bytes)
    else:
        path, data = load_data, None
    plate = PlateRequest(model=name, load_data_path=path, load_data_bytes=data, locations=locations or None,
                         detect_nuclei=detect_nuclei, illum=illum, platemap=platemap or None,
                         channels=parse_channels(channels))
    spec, sites, csv = await run_in_threadpool(prepare_plate, plate, settings, list(manifest.channels))
    created = await run_in_threadpool(plates.create, spec, sites, csv)
    if created or _needs_queueing(plates, spec.id):
        await run_in_threadpool(plates.uncancel, spec.id)
        await run_in_threadpool(partial(plate_lifecycle.enqueue_sites, plates, queue, spec.id, fresh=created))
    response.headers["Location"] = f"/v1/plates/{spec.id}"
    public = await run_in_threadpool(plates.public, spec.id)
    if public.status.finished:
        response.status_code = 200
    return public


@router.get("", response_model=PlateList, summary="Every plate job", responses=problem_responses(401))
async def list_plates(plates: PlateStoreDep) -> PlateList:
    def listing() -> PlateList:
        found = []
        for plate_id in plates.ids():
            try:
                found.append(plates.public(plate_id))
            except (NotFoundError, ValueError, OSError):
                continue
        return PlateList(data=found)

    return await run_in_threadpool(listing)


@router.get("/{plate_id}", response_model=PlatePublic, summary="Plate progress: sites done, failed, pending; "
            "cells, cells/s, ETA", responses=problem_responses(401, 404))
async def get_plate(
    plate_id: str,
    plates: PlateStoreDep,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="block up to this many seconds until it finishes")] = 0,
) -> PlatePublic:
    _exists(plates, plate_id)
    deadline = time.monotonic() + wait
    delay = 0.01
    while True:
        plate = await run_in_threadpool(plates.public, plate_id)
        if plate.status.finished or time.monotonic() >= deadline:
            return plate
        await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 1.5, 0.25)


@router.delete("/{plate_id}", response_model=PlatePublic, summary="Cancel a plate: pending sites are dropped, done "
               "sites kept", responses=problem_responses(401, 404) | {409: {"description": "the plate has finished"}})
async def cancel_plate(plate_id: str, plates: PlateStoreDep, queue: QueueDep) -> PlatePublic:
    _exists(plates, plate_id)
    plate = await run_in_threadpool(plates.public, plate_id)
    if plate.status in (PlateStatus.SUCCEEDED, PlateStatus.FAILED):
        raise ConflictError(f"plate {plate_id} has {plate.status.value}; there is nothing left to cancel")
    await run_in_threadpool(plate_lifecycle.cancel, plates, queue, plate_id)
    return await run_in_threadpool(plates.public, plate_id)


@router.get("/{plate_id}/wells", summary="Well profiles (mean of site medians, platemap joined)",
            response_class=Response, responses=_TABLE_FILE | problem_responses(401, 404) | {409: {"description": "not finished"}})
async def plate_wells(plate_id: str, plates: PlateStoreDep, format: TableFormat = "parquet") -> Response:
    return await _plate_table(plates, plate_id, "wells", format)


@router.get("/{plate_id}/sites", summary="Site profiles (median of each site's cells)",
            response_class=Response, responses=_TABLE_FILE | problem_responses(401, 404) | {409: {"description": "not finished"}})
async def plate_sites(plate_id: str, plates: PlateStoreDep, format: TableFormat = "parquet") -> Response:
    return await _plate_table(plates, plate_id, "sites", format)


@router.get("/{plate_id}/cells/{site}", summary="One site's cells (site named Plate__Well__Site)",
            response_class=Response, responses=_TABLE_FILE | problem_responses(401, 404))
async def plate_site_cells(plate_id: str, site: str, plates: PlateStoreDep, format: TableFormat = "parquet") -> Response:
    _exists(plates, plate_id)
    known = {s.name: s for s in await run_in_threadpool(plates.sites, plate_id)}
    if site not in known:
        raise NotFoundError(f"plate {plate_id} has no site {site!r} (sites are named Plate__Well__Site)")
    path = plates.output(plate_id).site_path(known[site])
    if not path.is_file():
        failure = plates.failure(plate_id, known[site])
        raise NotFoundError(f"site {site} of plate {plate_id} " + (f"failed: {failure}" if failure else "is not done yet"))
    return await _file(path, f"{plate_id}-{site}", format)


def _require_form(request: Request) -> None:
    content_type = request.headers.get("content-type", "").lower()
    if not content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        raise InputError("submit plates as a form (multipart/form-data or application/x-www-form-urlencoded), "
                         f"not {content_type or 'an untyped body'}")


def _needs_queueing(plates: PlateStore, plate_id: str) -> bool:
    """The same plate again: resume it when it was cancelled, or when its enqueueing was interrupted."""
    if plates.is_finished(plate_id):
        return False
    return plates.is_cancelled(plate_id) or not plates.is_queued(plate_id)


def _exists(plates: PlateStore, plate_id: str) -> None:
    if not plates.exists(check_plate_id(plate_id)):
        raise NotFoundError(f"plate {plate_id} does not exist")


async def _plate_table(plates: PlateStore, plate_id: str, name: str, format: str) -> Response:
    _exists(plates, plate_id)
    if not plates.is_finished(plate_id):
        raise ConflictError(f"plate {plate_id} has not finished; poll GET /v1/plates/{plate_id}")
    path = plates.folder(plate_id) / "output" / f"{name}.parquet"
    if not path.is_file():
        raise NotFoundError(f"plate {plate_id} has no {name} table (every site failed)")
    return await _file(path, f"{plate_id}-{name}", format)


async def _file(path: Path, stem: str, format: str) -> Response:
    if format == "parquet":
        return FileResponse(path, media_type=MEDIA_PARQUET, filename=f"{stem}.parquet")

    def to_csv() -> bytes:
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        sink = io.BytesIO()
        pacsv.write_csv(pq.read_table(path), sink)
        return sink.getvalue()

    return Response(await run_in_threadpool(to_csv), media_type=MEDIA_CSV,
                    headers={"Content-Disposition": f'attachment; filename="{stem}.csv"'})

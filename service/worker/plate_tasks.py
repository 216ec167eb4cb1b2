"""Plate site jobs: read one site from the shared volume -> locate cells -> embed -> write its cells file.

``run_plate_site`` is the one code path: the in-process queue calls it directly, RQ workers through
``plate_site_job``. Cells are embedded through the worker's ``Batcher`` (batched with other jobs'
cells); every state change goes through ``cpcnn.service.plate_lifecycle``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from cpcnn.service import lifecycle, plate_lifecycle
from cpcnn.service.plate_store import PlateSpec, PlateStore, checked_platemap, parse_site_job_id

from cpcnn.errors import CpcnnError, InputError

if TYPE_CHECKING:
    import pandas as pd
    from cpcnn.service.worker.tasks import WorkerContext

    from cpcnn.plates.locations import LocationSource
    from cpcnn.plates.sites import SiteSpec

logger = logging.getLogger(__name__)

_stores: dict[str, PlateStore] = {}
_sources: OrderedDict[str, LocationSource] = OrderedDict()  # a few plates' location tables, read once each
_lock = threading.Lock()
_KEEP_SOURCES = 4


def plate_store(context: WorkerContext) -> PlateStore:
    """The plate store next to the context's job store (one per data directory and process)."""
    key = str(context.jobs.root)
    with _lock:
        if key not in _stores:
            _stores[key] = PlateStore(context.jobs.root)
        return _stores[key]


def plate_site_job(payload: dict[str, Any]) -> dict[str, Any]:
    """RQ entry point: ``payload = {"job_id": "<plate id>-<index>"}``."""
    from cpcnn.service.worker.tasks import current_context

    context = current_context()
    if context is None:
        raise RuntimeError("worker context not set: run jobs with 'cpcnn worker'")
    return run_plate_site(str(payload["job_id"]), context)


def run_plate_site(job_id: str, context: WorkerContext) -> dict[str, Any]:
    """Profile one site; input errors fail the site, anything else raises so the queue retries."""
    plates = plate_store(context)
    plate_id, index = parse_site_job_id(job_id)
    begun = plate_lifecycle.begin_site(plates, plate_id, index, max_attempts=context.max_attempts,
                                       counter=context.attempts, finisher=write_plate_tables)
    if isinstance(begun, dict):
        return begun
    spec, site = begun
    began = time.perf_counter()
    try:
        table = profile_site(spec, site, context)
    except Exception as exc:
        if lifecycle.retryable(exc):
            raise
        plate_lifecycle.site_failed(plates, plate_id, site, str(exc), write_plate_tables)
        return {"job_id": job_id, "status": "failed"}
    plates.output(plate_id).write_site(site, table)
    context.runtime.stats.inc("jobs_succeeded")
    logger.info("plate %s %s n_cells=%d %.3f s", plate_id, site.describe(), len(table), time.perf_counter() - began)
    plate_lifecycle.finish_if_complete(plates, plate_id, write_plate_tables)
    return {"job_id": job_id, "status": "succeeded", "n_cells": len(table)}


def profile_site(spec: PlateSpec, site: SiteSpec, context: WorkerContext) -> pd.DataFrame:
    """The site's cells table, as ``cpcnn profile`` writes it."""
    from cpcnn.io.cells import cells_table
    from cpcnn.plates.pipeline import load_site

    batcher = context.runtime.batcher(spec.model)
    embedder = batcher.embedder
    with batcher.preparing():
        image = load_site(site, illum=spec.illum, channels=embedder.manifest.channels)
        source = _locations(spec)
        locations = source.for_site(site, image if source.needs_image else None)
        if spec.max_cells is not None and len(locations.centers) > spec.max_cells:
            raise InputError(f"{site.describe()} has {len(locations.centers)} cells, over the limit of "
                             f"{spec.max_cells} (CPCNN_LIMITS__MAX_CELLS)")
        crops = embedder.site_crops(image, locations.centers)
    features = np.empty((len(crops), embedder.feature_size), np.float32)
    for rows in crops.slices():
        with batcher.preparing():
            batch = crops.crop(rows)
        features[rows] = batcher.embed(batch)
    metadata = {"Metadata_Plate": site.plate, "Metadata_Well": site.well, "Metadata_Site": site.site}
    table = cells_table(features, locations, metadata=metadata, model_name=embedder.manifest.name,
                        feature_prefix=embedder.manifest.feature_prefix)
    return table.to_pandas()


def _locations(spec: PlateSpec) -> LocationSource:
    with _lock:
        found = _sources.get(spec.id)
        if found is not None:
            _sources.move_to_end(spec.id)
            return found
    if spec.detect_nuclei:
        from cpcnn.plates.locations import DetectNuclei

        limit = {"max_nuclei": spec.max_cells} if spec.max_cells is not None else {}
        source: LocationSource = DetectNuclei(**limit)  # refuses before any per-cell array exists
    else:
        from cpcnn.plates.locations import open_locations

        source = open_locations(Path(spec.locations or ""))
    with _lock:
        _sources[spec.id] = source
        while len(_sources) > _KEEP_SOURCES:
            _sources.popitem(last=False)
    return source


def write_plate_tables(plates: PlateStore, spec: PlateSpec) -> dict[str, Any]:
    """The finisher: sites.parquet, wells.parquet and run.json from the cells files; returns a summary."""
    progress, failed = plates.progress(spec.id)
    run = {
        "plate_job": spec.id, "model": spec.model, "load_data": spec.load_data,
        "locations": "detected nuclei" if spec.detect_nuclei else spec.locations, "illum": spec.illum,
        "platemap": spec.platemap, "sites": progress.sites, "sites_done": progress.done,
        "sites_failed": progress.failed, "cells": progress.cells, "failed": failed,
    }
    if progress.done:
        platemap = checked_platemap(Path(spec.platemap), plates.sites(spec.id)) if spec.platemap else None
        plates.output(spec.id).finish(platemap=platemap, run=run)
    return {"sites_done": progress.done, "sites_failed": progress.failed, "cells": progress.cells}


def site_crash_is_final(context: WorkerContext, job_id: str, *, crashes: int) -> bool:
    """The in-process queue's retry decision for a site (its durable count includes earlier processes)."""
    plates = plate_store(context)
    plate_id, index = parse_site_job_id(job_id)
    try:
        site = plates.sites(plate_id)[index]
        path = plates.folder(plate_id) / "attempts" / site.name
        durable = int(path.read_text() or 0) if path.is_file() else 0
    except (CpcnnError, IndexError, OSError, ValueError):
        return True
    return max(durable, crashes) >= context.max_attempts


def after_site_crash(context: WorkerContext, job_id: str, exc: BaseException | None, *, final: bool) -> None:
    plate_id, index = parse_site_job_id(job_id)
    reason = None if exc is None else (str(exc) if isinstance(exc, CpcnnError) else f"worker error ({type(exc).__name__})")
    plate_lifecycle.after_site_crash(plate_store(context), plate_id, index, reason, final=final,
                                     finisher=write_plate_tables)


def on_site_failure(job: Any, connection: Any, exc_type: Any = None, exc_value: Any = None, traceback: Any = None) -> None:
    """RQ failure callback of site jobs (also for sites abandoned by a killed worker)."""
    from cpcnn.service.worker.tasks import current_context

    context = current_context()
    if context is None:
        return
    abandoned = exc_type is not None and exc_type.__name__ == "AbandonedJobError"
    final = not (job.retries_left and job.retries_left > 0)
    after_site_crash(context, str(job.id), None if abandoned or not isinstance(exc_value, BaseException) else exc_value,
                     final=final)
    logger.warning("plate site %s failed in worker (%s); %s", job.id, exc_type.__name__ if exc_type else "lost",
                   "giving up" if final else "will retry")

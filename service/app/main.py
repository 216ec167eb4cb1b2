"""``create_app(settings)``: the FastAPI application. No import-time effects: the data directory, the
queue and (embedded mode) the model are set up in the lifespan, so ``create_app().openapi()`` is pure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from cpcnn.service.app import openapi, problems
from cpcnn.service.app.deps import ServiceState
from cpcnn.service.app.middleware import ApiKeyGate, BodyLimit, RequestMetrics, TrustedHosts
from cpcnn.service.app.routes import ROOT_ROUTERS, V1_ROUTERS
from cpcnn.service.config import ApiSettings
from cpcnn.service.in_process_queue import InProcessQueue
from cpcnn.service.job_store import JobStore
from cpcnn.service.plate_lifecycle import resume
from cpcnn.service.plate_store import PlateStore
from cpcnn.service.profile_store import ProfileStore
from cpcnn.service.prometheus import ApiMetrics
from cpcnn.service.queue import JobQueue
from cpcnn.service.worker.plate_tasks import write_plate_tables
from cpcnn.service.worker.runtime import Runtime
from fastapi import FastAPI
from fastapi.routing import APIRoute

from cpcnn import __version__

logger = logging.getLogger(__name__)

API_PREFIX = "/v1"
DESCRIPTION = (
    "Cell Painting CNN-1 single-cell embeddings. Submit a five-channel field of view with nucleus "
    "locations (or ask for nuclei to be detected), then fetch one feature row per cell as JSON, Parquet "
    "or .npy. Profiles: upload tables, fit and apply sphering, build reference libraries, match queries "
    "and evaluate retrieval. Errors are RFC 9457 problem+json. Send `X-API-Key` when the server has a key."
)


def operation_id(route: APIRoute) -> str:
    """Stable operationIds, ``{tag}-{name}``, so generated clients do not churn."""
    return f"{route.tags[0]}-{route.name}" if route.tags else route.name


def build_queue(settings: ApiSettings, jobs: JobStore) -> JobQueue:
    store = settings.model_store()
    if settings.redis_url:
        from cpcnn.service.redis_queue import RedisQueue

        return RedisQueue(settings.redis_url, settings.queue, worker_ttl_s=3 * settings.worker.heartbeat_s)
    runtime = Runtime(store, settings.worker)
    return InProcessQueue(jobs, runtime, slots=settings.worker.slots, retries=settings.queue.retries,
                          preload=(settings.default_model,))


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings if settings is not None else ApiSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        jobs = JobStore(settings.resolved_data_dir())
        queue = build_queue(settings, jobs)
        profiles = ProfileStore(settings.resolved_data_dir(), open_libraries=settings.open_libraries)
        plates = PlateStore(settings.resolved_data_dir())
        service = ServiceState(settings=settings, models=settings.model_store(), jobs=jobs, queue=queue,
                               metrics=ApiMetrics(queue.snapshot), profiles=profiles, plates=plates)
        settings.warn_if_open()
        queue.start()
        await asyncio.to_thread(resume, plates, queue, write_plate_tables)
        app.state.service = service
        janitor = asyncio.create_task(_prune_forever(jobs, settings))
        logger.info("cpcnn API ready: %s queue, data in %s", queue.kind, jobs.root)
        try:
            yield
        finally:
            janitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await janitor
            await asyncio.to_thread(queue.close)
            app.state.service = None

    app = FastAPI(
        title="cpcnn",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
        redirect_slashes=False,  # a redirect would echo the client's Host header back as an absolute URL
    )
    app.state.settings = settings
    app.state.service = None
    problems.install(app)
    openapi.install(app)
    for router in V1_ROUTERS:
        app.include_router(router, prefix=API_PREFIX)
    for router in ROOT_ROUTERS:
        app.include_router(router)
    # Added innermost first: metrics -> Host check -> API key -> body limit -> routes.
    app.add_middleware(BodyLimit, max_bytes=lambda: settings.limits.max_upload_bytes)
    app.add_middleware(ApiKeyGate, expected=lambda: _secret(settings), metrics_public=lambda: settings.metrics_public)
    app.add_middleware(TrustedHosts, allowed=settings.allowed_hosts())
    app.add_middleware(RequestMetrics, metrics=lambda: _metrics_of(app))
    return app


def _secret(settings: ApiSettings) -> str | None:
    return settings.api_key.get_secret_value() if settings.api_key is not None else None


def _metrics_of(app: FastAPI) -> ApiMetrics | None:
    service: ServiceState | None = app.state.service
    return service.metrics if service is not None else None


async def _prune_forever(jobs: JobStore, settings: ApiSettings) -> None:
    """Delete finished jobs past their TTL, hourly (shared volumes: any API replica may do it)."""
    while True:
        try:
            removed = await asyncio.to_thread(jobs.prune, max_age_s=settings.queue.data_ttl_s)
            if removed:
                logger.info("pruned %d finished jobs older than %d s", removed, settings.queue.data_ttl_s)
        except OSError as exc:
            logger.warning("pruning the data directory failed: %s", exc)
        await asyncio.sleep(3600)

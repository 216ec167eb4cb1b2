"""Liveness, readiness and Prometheus metrics.

``/healthz`` and ``/readyz`` need neither the API key nor a trusted Host, so they say only what a load
balancer needs; the version, workers (host, pid, provider), queue depth and reasons go to callers with
the key (when the server has none, to callers using a trusted Host).
"""

from __future__ import annotations

from typing import Literal

from cpcnn.service.app.deps import MetricsDep, QueueDep, SettingsDep, require_api_key
from cpcnn.service.app.middleware import host_allowed, host_name, key_matches
from cpcnn.service.config import ApiSettings
from cpcnn.service.queue import JobQueue
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from cpcnn import __version__
from cpcnn.errors import UnavailableError
from cpcnn.schemas import Health, Readiness

#: What /readyz tells a caller without the key.
_PUBLIC_READINESS = {"ready", "queue", "queue_reachable"}

router = APIRouter(tags=["health"])


def authorized(request: Request) -> bool:
    """Whether this caller may see details: the key matches, or the server has none and the Host is trusted."""
    settings = request.app.state.settings
    if settings.api_key is not None:
        return key_matches(settings.api_key.get_secret_value(), request.headers.get("x-api-key"))
    return host_allowed(host_name(request.headers.get("host", "")), settings.allowed_hosts())


@router.get("/healthz", response_model=Health, response_model_exclude_none=True, summary="The process is up")
async def healthz(request: Request) -> Health:
    return Health(version=__version__ if authorized(request) else None)


@router.get("/readyz", response_model=Readiness, summary="Ready to embed",
            responses={503: {"model": Readiness, "description": "not ready; `reasons` says why"}})
async def readyz(request: Request, settings: SettingsDep, queue: QueueDep) -> JSONResponse:
    readiness = await run_in_threadpool(check_ready, settings, queue)
    shown = None if authorized(request) else _PUBLIC_READINESS
    return JSONResponse(readiness.model_dump(mode="json", include=shown), status_code=200 if readiness.ready else 503)


def check_ready(settings: ApiSettings, queue: JobQueue) -> Readiness:
    """Ready when the queue answers and a worker has the default model loaded and warmed."""
    model = settings.default_model
    kind: Literal["embedded", "redis"] = "embedded" if queue.kind == "embedded" else "redis"
    try:
        depth = queue.depth()
        workers = queue.workers()
    except UnavailableError as exc:
        return Readiness(ready=False, queue=kind, queue_reachable=False, reasons=[str(exc)])
    reasons = []
    if not any(model in w.models and w.warmed for w in workers):
        reasons.append(queue.load_error() or f"no worker has model {model!r} loaded and warmed yet")
    return Readiness(ready=not reasons, queue=kind, queue_reachable=True, queue_depth=depth, workers=workers,
                     reasons=reasons)


async def _metrics_auth(request: Request, settings: SettingsDep) -> None:
    if not settings.metrics_public:
        require_api_key(settings, request.headers.get("x-api-key"))


@router.get("/metrics", summary="Prometheus metrics", dependencies=[Depends(_metrics_auth)],
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "text exposition format"}})
async def metrics(api_metrics: MetricsDep) -> Response:
    body = await run_in_threadpool(api_metrics.render)
    return Response(body, media_type=CONTENT_TYPE_LATEST)

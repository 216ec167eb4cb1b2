"""Shared dependencies as ``Annotated`` aliases, so handlers read as typed signatures.

Each handler asks for exactly what it uses (``QueueDep``, ``JobStoreDep``, ``ProfileStoreDep``, ...);
``ServiceState`` is built once in the app's lifespan and never handed to a handler whole.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from cpcnn.service.config import ApiSettings
from cpcnn.service.job_store import JobStore, check_job_id
from cpcnn.service.plate_store import PlateStore
from cpcnn.service.profile_store import ProfileStore
from cpcnn.service.prometheus import ApiMetrics
from cpcnn.service.queue import JobQueue
from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader
from starlette.concurrency import run_in_threadpool

from cpcnn.model_store import ModelStore
from cpcnn.schemas import API_KEY_HEADER, JobPublic


@dataclass
class ServiceState:
    """Everything the handlers share; built in the app's lifespan, never at import."""

    settings: ApiSettings
    models: ModelStore
    jobs: JobStore
    queue: JobQueue
    metrics: ApiMetrics
    profiles: ProfileStore
    plates: PlateStore


def _service(request: Request) -> ServiceState:
    service: ServiceState | None = getattr(request.app.state, "service", None)
    if service is None:
        raise RuntimeError("the app's lifespan has not run (use 'with TestClient(app)' or uvicorn)")
    return service


def get_settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


def get_queue(request: Request) -> JobQueue:
    return _service(request).queue


def get_job_store(request: Request) -> JobStore:
    return _service(request).jobs


def get_model_store(request: Request) -> ModelStore:
    return _service(request).models


def get_profile_store(request: Request) -> ProfileStore:
    return _service(request).profiles


def get_plate_store(request: Request) -> PlateStore:
    return _service(request).plates


def get_metrics(request: Request) -> ApiMetrics:
    return _service(request).metrics


SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]
JobStoreDep = Annotated[JobStore, Depends(get_job_store)]
ModelStoreDep = Annotated[ModelStore, Depends(get_model_store)]
ProfileStoreDep = Annotated[ProfileStore, Depends(get_profile_store)]
PlateStoreDep = Annotated[PlateStore, Depends(get_plate_store)]
MetricsDep = Annotated[ApiMetrics, Depends(get_metrics)]


async def get_job(job_id: str, jobs: JobStoreDep) -> JobPublic:
    """The job named by the ``{job_id}`` path parameter; 404 when the id is malformed or unknown."""
    return await run_in_threadpool(jobs.public, check_job_id(job_id))


JobDep = Annotated[JobPublic, Depends(get_job)]

_api_key_scheme = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="required when the server sets one")


def require_api_key(settings: SettingsDep, key: Annotated[str | None, Security(_api_key_scheme)]) -> None:
    """401 unless the server has no key or the header matches it (constant-time compare)."""
    expected = settings.api_key
    if expected is None:
        return
    if key is None or not hmac.compare_digest(key.encode(), expected.get_secret_value().encode()):
        raise HTTPException(
            status_code=401, detail=f"missing or wrong {API_KEY_HEADER} header", headers={"WWW-Authenticate": "ApiKey"}
        )


ApiKeyDep = Depends(require_api_key)

"""Shared dependencies as ``Annotated`` aliases, so handlers read as typed signatures."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from cpcnn.service.config import ApiSettings
from cpcnn.service.job_store import JobStore
from cpcnn.service.profile_store import ProfileStore
from cpcnn.service.prometheus import ApiMetrics
from cpcnn.service.queue import JobQueue
from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from cpcnn.model_store import ModelStore
from cpcnn.schemas import API_KEY_HEADER


@dataclass
class ServiceState:
    """Everything the handlers share; built in the app's lifespan, never at import."""

    settings: ApiSettings
    models: ModelStore
    jobs: JobStore
    queue: JobQueue
    metrics: ApiMetrics
    profiles: ProfileStore


def get_service(request: Request) -> ServiceState:
    service: ServiceState | None = getattr(request.app.state, "service", None)
    if service is None:
        raise RuntimeError("the app's lifespan has not run (use 'with TestClient(app)' or uvicorn)")
    return service


def get_settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


ServiceDep = Annotated[ServiceState, Depends(get_service)]
SettingsDep = Annotated[ApiSettings, Depends(get_settings)]

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

"""One router per resource. Versioned routers are mounted under ``/v1`` in order; add new ones here."""

from __future__ import annotations

from cpcnn.service.app.routes import (
    evaluation,
    health,
    jobs,
    libraries,
    models,
    plates,
    previews,
    status,
    table_maps,
    tables,
    transforms,
    ui,
)
from fastapi import APIRouter

#: Resource routers served under /v1 (a new resource = one module + one entry).
V1_ROUTERS: list[APIRouter] = [
    jobs.router, models.router, tables.router, table_maps.router, transforms.router, libraries.router,
    evaluation.router, status.router, previews.router, plates.router,
]

#: Unversioned endpoints: operations (/healthz, /readyz, /metrics) and the web console (/ui, / redirects).
ROOT_ROUTERS: list[APIRouter] = [health.router, ui.router]

"""One router per resource. Versioned routers are mounted under ``/v1`` in order; add new ones here."""

from __future__ import annotations

from cpcnn.service.app.routes import evaluation, health, jobs, libraries, models, plates, tables, transforms
from fastapi import APIRouter

#: Resource routers served under /v1 (a new resource = one module + one entry).
V1_ROUTERS: list[APIRouter] = [
    jobs.router, models.router, tables.router, transforms.router, libraries.router, evaluation.router,
    plates.router,
]

#: Unversioned operational endpoints (/healthz, /readyz, /metrics).
ROOT_ROUTERS: list[APIRouter] = [health.router]

"""Wire models shared by the service and the SDK, so both sides agree on one contract.

Everything here is JSON on the wire; ``openapi/openapi.json`` is generated from these classes.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cpcnn.manifest import ModelManifest

#: Media types the result endpoint serves (``Accept`` header or ``?format=``).
MEDIA_JSON = "application/json"
MEDIA_PARQUET = "application/vnd.apache.parquet"
MEDIA_NPY = "application/x-npy"
MEDIA_PROBLEM = "application/problem+json"
RESULT_FORMATS: dict[str, str] = {"json": MEDIA_JSON, "parquet": MEDIA_PARQUET, "npy": MEDIA_NPY}

#: Header carrying the optional API key.
API_KEY_HEADER = "X-API-Key"


class JobStatus(StrEnum):
    """Life of an embedding job; ``succeeded`` and ``failed`` are final."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED)


class Problem(BaseModel):
    """RFC 9457 problem details: every error the API returns has this body."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    code: str = Field(description="machine-readable error kind, e.g. input_error, not_found")
    instance: str | None = None
    errors: list[dict[str, Any]] | None = Field(default=None, description="per-field validation errors")
    retry_after_s: int | None = None


class ImageInfo(BaseModel):
    width: int
    height: int
    channels: list[str]


class JobLinks(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    self_: str = Field(alias="self")
    result: str


class JobPublic(BaseModel):
    """One embedding job as clients see it."""

    id: str = Field(description="content hash of the upload: the same upload gives the same id")
    status: JobStatus
    model: str
    normalization: str
    metadata: dict[str, str] = Field(default_factory=dict)
    image: ImageInfo
    detect_nuclei: bool = False
    n_locations: int | None = Field(default=None, description="locations uploaded; null when nuclei are detected")
    n_cells: int | None = Field(default=None, description="rows in the result, once succeeded")
    feature_size: int | None = None
    attempts: int = 0
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    queue_wait_s: float | None = None
    run_s: float | None = None
    error: Problem | None = None
    links: JobLinks


class ModelPublic(BaseModel):
    """What a stored model expects and produces (its manifest, minus internals)."""

    name: str
    feature_layer: str
    feature_size: int
    feature_prefix: str
    channels: list[str]
    crop_size: int
    normalization: str
    input_name: str
    input_layout: str
    output_name: str
    onnx_sha256: str
    source: str
    source_sha256: str
    created_at: str

    @classmethod
    def from_manifest(cls, manifest: ModelManifest) -> ModelPublic:
        return cls.model_validate(manifest.model_dump(exclude={"notes"}) | {"channels": list(manifest.channels)})


class ModelList(BaseModel):
    data: list[ModelPublic]
    count: int


class CellsResult(BaseModel):
    """A job's result as JSON: one location and one feature row per cell, in input order."""

    job_id: str
    model: str
    feature_prefix: str
    metadata: dict[str, str]
    n_cells: int
    feature_size: int
    locations: list[tuple[float, float]] = Field(description="[x, y] per cell, x = column, y = row")
    features: list[list[float]]


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str


class WorkerPublic(BaseModel):
    name: str
    host: str
    pid: int
    models: list[str]
    provider: str
    batch_size: int
    warmed: bool
    last_seen: datetime


class Readiness(BaseModel):
    ready: bool
    queue: Literal["embedded", "redis"]
    queue_reachable: bool
    queue_depth: int | None = None
    workers: list[WorkerPublic] = Field(default_factory=list)
    reasons: list[str] = Field(default_factory=list, description="why not ready; empty when ready")

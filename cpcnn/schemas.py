"""Wire models shared by the service and the SDK, so both sides agree on one contract.

Everything here is JSON on the wire; ``openapi/openapi.json`` is generated from these classes.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cpcnn.errors import CpcnnError, UnavailableError
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

    @classmethod
    def of(cls, kind: type[CpcnnError], detail: str, instance: str | None = None, **extra: Any) -> Problem:
        """A problem of a declared error kind: its status, code and title, with this detail."""
        return cls(title=kind.title, status=kind.http_status, detail=detail, code=kind.code, instance=instance,
                   **extra)

    @classmethod
    def from_error(cls, error: CpcnnError, instance: str | None = None,
                   *, kind: type[CpcnnError] | None = None) -> Problem:
        """``error`` as the client sees it: its class's declaration (or ``kind``'s), its message as detail."""
        extra = {"retry_after_s": error.retry_after_s} if isinstance(error, UnavailableError) else {}
        return cls.of(kind or type(error), str(error), instance, **extra)


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
    object_numbers: list[int] | None = Field(
        default=None,
        description="per cell: the uploaded ObjectNumber, else its 1-based position in the locations "
        "(Metadata_ObjectNumber in tables)",
    )
    features: list[list[float]]


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str | None = Field(default=None, description="only for callers with the API key")


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
    """Without the API key only ``ready``, ``queue`` and ``queue_reachable`` are sent."""

    ready: bool
    queue: Literal["embedded", "redis"]
    queue_reachable: bool
    queue_depth: int | None = None
    workers: list[WorkerPublic] = Field(default_factory=list)
    reasons: list[str] = Field(default_factory=list, description="why not ready; empty when ready")


# -- profiles: tables, sphering transforms, reference libraries, evaluation ------------------------

_ID = "content hash of what made it (32 hex digits): the same request gives the same id"
#: Most names/patterns in one feature selection (CellProfiler tables have a few thousand features).
MAX_FEATURE_SELECTION = 20_000
_FEATURES = (
    "feature columns of the table to use: names and/or glob patterns such as efficientnet_*; "
    "default: every numeric column not named Metadata_* (cell coordinates are never features)"
)


def _features_field() -> Any:
    return Field(default=None, min_length=1, max_length=MAX_FEATURE_SELECTION, description=_FEATURES,
                 examples=[["efficientnet_*"]])


class TablePublic(BaseModel):
    """A stored profile table: ``Metadata_*`` columns plus float32 feature columns."""

    id: str = Field(description=_ID)
    name: str = Field(description="the uploaded file's name, or how the table was derived")
    n_rows: int
    n_features: int
    metadata_columns: list[str]
    feature_names: list[str]
    created_at: datetime
    provenance: dict[str, str] = Field(default_factory=dict, description="transform_id and table_id when derived")


class TableList(BaseModel):
    data: list[TablePublic]
    count: int


class TransformCreate(BaseModel):
    """Fit a sphering transform on the control rows of a stored table."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    table_id: str
    controls: str = Field(description="control rows as COLUMN=VALUE", examples=["Metadata_broad_sample=DMSO"])
    lam: float = Field(alias="lambda", gt=0, allow_inf_nan=False, description="absolute, added to eigenvalues")
    method: Literal["zca", "zca-cor"] = Field(default="zca", description="ZCA on covariance or correlation")
    features: list[str] | None = _features_field()


class TransformPublic(BaseModel):
    """A fitted sphering transform; it applies only to tables with the same feature names."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    id: str = Field(description=_ID)
    table_id: str = Field(description="the table it was fitted on")
    method: str
    lam: float = Field(alias="lambda")
    controls: str
    n_controls: int
    n_features: int
    rank: int = Field(description="rank of the control covariance")
    rank_deficient: bool = Field(description="fewer independent controls than features: lambda dominates")
    warnings: list[str] = Field(default_factory=list)
    feature_names: list[str]
    created_at: datetime
    provenance: dict[str, str] = Field(default_factory=dict)


class TransformList(BaseModel):
    data: list[TransformPublic]
    count: int


class TableRef(BaseModel):
    """A stored table to work on."""

    model_config = ConfigDict(extra="forbid")

    table_id: str
    features: list[str] | None = _features_field()


class LibraryCreate(BaseModel):
    """Build a reference library from a stored table; rows sharing an id are averaged."""

    model_config = ConfigDict(extra="forbid")

    table_id: str
    id_column: str = Field(examples=["Metadata_broad_sample"])
    annotations: list[str] = Field(default_factory=list, description="columns returned with every match")
    features: list[str] | None = _features_field()


class LibraryPublic(BaseModel):
    """A reference library: unit-normalized profiles, memory-mapped by the server for matching."""

    id: str = Field(description=_ID)
    table_id: str
    id_column: str
    annotation_columns: list[str]
    n_profiles: int
    n_features: int
    feature_names: list[str]
    created_at: datetime


class LibraryList(BaseModel):
    data: list[LibraryPublic]
    count: int


class InlineProfiles(BaseModel):
    """Query profiles sent in the request: one row per query, features in the library's order."""

    model_config = ConfigDict(extra="forbid")

    ids: list[str | int] | None = Field(default=None, description="one per row; row numbers when omitted")
    features: list[list[float]] = Field(min_length=1, description="(queries, library features)")


class MatchRequest(BaseModel):
    """Queries as a stored table (``table_id``) or inline (``profiles``), exactly one of the two."""

    model_config = ConfigDict(extra="forbid")

    table_id: str | None = None
    profiles: InlineProfiles | None = None
    id_column: str | None = Field(default=None, description="query id column of the table (default: the library's)")
    top_k: int = Field(default=10, ge=1, le=1000)
    leave_one_out: bool = Field(default=False, description="never return the library row with the query's own id")
    features: list[str] | None = _features_field()

    @model_validator(mode="after")
    def _one_source(self) -> MatchRequest:
        if (self.table_id is None) == (self.profiles is None):
            raise ValueError("send exactly one of table_id and profiles")
        if self.features is not None and self.profiles is not None:
            raise ValueError("features selects columns of a table_id; inline profiles are in the library's order")
        return self


class Match(BaseModel):
    query_id: str | int
    rank: int = Field(description="1 = most similar")
    library_id: str | int
    score: float = Field(description="cosine similarity")
    annotations: dict[str, str | None] = Field(default_factory=dict)


class MatchResult(BaseModel):
    """Top-k cosine matches, ``top_k`` rows per query (fewer when the library is smaller), best first."""

    library: str
    n_queries: int
    top_k: int
    matches: list[Match]


class EvaluateRequest(BaseModel):
    """Retrieval metrics of a stored table: treatments by ``id_column``, hits share an ``annotation`` value."""

    model_config = ConfigDict(extra="forbid")

    table_id: str
    id_column: str = Field(examples=["Metadata_broad_sample"])
    annotation: str = Field(examples=["Metadata_moa"])
    separator: str | None = Field(default="|", description="multi-value separator; null for none")
    features: list[str] | None = _features_field()
    convention: Literal["copairs", "paper"] = Field(
        default="copairs",
        description="copairs: exact non-interpolated mAP, Haldane-Anscombe for infinite odds ratios; "
        "paper: the CNN-1 paper's published evaluation code (its queries, interpolated mAP, odds-ratio rule)",
    )


class PrecisionAtRecall(BaseModel):
    recall: list[float]
    precision: list[float | None]


class Evaluation(BaseModel):
    """Mean retrieval metrics (``cpcnn evaluate``); ``settings`` states the protocol and rules used."""

    table_id: str
    convention: Literal["copairs", "paper"] = Field(description="the rules that produced these numbers")
    mean_average_precision: float | None = Field(
        description="copairs: non-interpolated; paper: the paper's interpolated mAP"
    )
    mean_average_precision_interpolated: float | None
    folds_of_enrichment: float | None
    n_queries: int = Field(description="folds-of-enrichment queries")
    n_queries_average_precision: int = Field(
        description="mAP queries: as n_queries for copairs, those with two or more hits for paper"
    )
    n_treatments: int
    n_excluded_unannotated: int
    n_odds_ratio_infinite: int
    n_odds_ratio_undefined: int
    message: str = ""
    settings: dict[str, Any] = Field(default_factory=dict)
    precision_at_recall: PrecisionAtRecall


# -- whole plates: a LoadData CSV on a shared volume, profiled site by site on the queue -------------


class PlateStatus(StrEnum):
    """Life of a plate job; ``succeeded``, ``failed`` and ``cancelled`` are final.

    A plate succeeds once every site is done or failed and the plate tables are written; it fails when
    every site failed.
    """

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (PlateStatus.SUCCEEDED, PlateStatus.FAILED, PlateStatus.CANCELLED)


class PlateProgress(BaseModel):
    """Counts derived from what is on disk: a site is done when its cells file exists."""

    sites: int
    done: int
    failed: int
    pending: int
    cells: int = Field(description="cells in the sites done so far")
    cells_per_s: float | None = Field(default=None, description="cells done per second since the plate was submitted")
    eta_s: float | None = Field(default=None, description="seconds until every site is done, at the pace so far")


class SiteFailure(BaseModel):
    site: str = Field(description="Plate__Well__Site")
    reason: str


class PlateLinks(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    self_: str = Field(alias="self")
    wells: str
    sites: str


class PlatePublic(BaseModel):
    """One plate job as clients see it."""

    id: str = Field(description="content hash of the LoadData CSV and the options: the same request gives the same id")
    status: PlateStatus
    model: str
    load_data: str = Field(description="the CSV's path on the shared volume, or 'upload'")
    locations: str | None = None
    detect_nuclei: bool = False
    illum: bool = False
    platemap: str | None = None
    channels: dict[str, str] | None = None
    progress: PlateProgress
    failures: list[SiteFailure] = Field(default_factory=list, description="failed sites (at most 100) and why")
    created_at: datetime
    finished_at: datetime | None = None
    links: PlateLinks


class PlateList(BaseModel):
    data: list[PlatePublic]
# -- the service at a glance: workers, recent jobs, throughput -------------------------------------


class WorkerList(BaseModel):
    """Live workers (those whose heartbeat is recent) and the queue they serve."""

    data: list[WorkerPublic]
    count: int
    queue: Literal["embedded", "redis"]
    queue_depth: int | None = Field(description="jobs waiting for a worker; null when the queue did not answer")


class JobList(BaseModel):
    """The most recently updated jobs, newest first."""

    data: list[JobPublic]
    count: int
    total: int = Field(description="jobs stored on the server")


class ThroughputBucket(BaseModel):
    start: datetime
    cells: int
    jobs: int
    cells_per_s: float


class Throughput(BaseModel):
    """Cells of the jobs that finished in each of the last minutes (by their finish time)."""

    bucket_s: int
    buckets: list[ThroughputBucket] = Field(description="oldest first; the last one is still filling")
    cells_per_s: float = Field(description="over the whole window")


# -- pictures for the console: crop previews and profile maps ---------------------------------------

#: Most cells whose crops one preview request returns.
MAX_PREVIEW_CROPS = 16


class CellCrops(BaseModel):
    """One cell's crops as the network sees them (after normalization), one PNG per channel."""

    index: int = Field(description="row in the site's locations, 0-based")
    object_number: int
    x: float
    y: float
    channels: dict[str, str] = Field(description="channel -> data:image/png;base64 URL, 8-bit grayscale")


class CropPreview(BaseModel):
    """A field of view as a person sees it: the nuclei, a false-colour composite and chosen cells' crops."""

    width: int
    height: int
    channels: list[str]
    crop_size: int
    normalization: str
    centers: list[tuple[float, float]] = Field(description="[x, y] per nucleus, x = column, y = row")
    object_numbers: list[int]
    composite: str | None = Field(default=None, description="data:image/png;base64 URL, downscaled")
    composite_scale: int = Field(default=1, description="image pixels per composite pixel")
    crops: list[CellCrops] = Field(default_factory=list)


class ProfileMap(BaseModel):
    """A table's profiles in 2-D, with every row's metadata for colouring and labels."""

    table_id: str
    method: Literal["pca", "umap"]
    n_rows: int = Field(description="rows in the table")
    n_shown: int = Field(description="rows in the map (evenly spaced when the table is larger than max_rows)")
    n_dropped_non_finite: int = Field(description="rows left out for a missing or infinite feature")
    explained_variance: list[float] | None = Field(default=None, description="PCA: ratio per component")
    x: list[float]
    y: list[float]
    rows: list[int] = Field(description="row number of each point in the table, 0-based")
    metadata: dict[str, list[str | None]] = Field(description="Metadata_* column -> value per point, as text")
    methods: list[str] = Field(description="methods this server can compute")

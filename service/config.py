"""Service settings: one pydantic-settings class per process, built from shared sub-models.

Sources, highest priority first: keyword arguments (the CLI), ``CPCNN_*`` environment variables
(nested with ``__``, e.g. ``CPCNN_LIMITS__MAX_UPLOAD_BYTES``), Docker secrets in ``/run/secrets``,
defaults. Nothing is read at import time: call ``ApiSettings()`` or ``WorkerSettings()``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from cpcnn.model_store import DEFAULT_MODEL, ModelStore, cpcnn_home

logger = logging.getLogger(__name__)

SECRETS_DIR = Path("/run/secrets")
#: Host names every server answers to, whatever its bind address (plus the bind host itself).
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
_PLACEHOLDER_KEYS = {"changeme", "changethis", "secret", "apikey", "api-key"}


class Limits(BaseModel):
    """What one request may contain or ask for; larger uploads get 413 before any pixel or row is decoded."""

    max_upload_bytes: int = Field(default=512 * 2**20, gt=0)
    max_part_bytes: int = Field(default=256 * 2**20, gt=0)
    max_pixels: int = Field(default=25_000_000, gt=0, description="per channel")
    max_cells: int = Field(default=50_000, gt=0)
    max_table_bytes: int = Field(default=512 * 2**20, gt=0, description="decompressed CSV (or uncompressed Parquet) size of one profile table")
    max_table_values: int = Field(default=100_000_000, gt=0, description="rows x columns of one profile table")
    max_table_expansion: int = Field(
        default=50, gt=0, description="decoded bytes per uploaded byte of a compressed table (gzip CSV, Parquet)"
    )
    max_matches: int = Field(default=1_000_000, gt=0, description="queries x top_k rows in one match answer")
    max_sphering_features: int = Field(
        default=2048, gt=0, description="features of one sphering fit (memory D^2, time D^3, file 8 D^2 bytes)"
    )


class HttpTimeouts(BaseModel):
    """How long a client may take to send a request; slow or stalled clients are disconnected."""

    header_s: float = Field(default=10.0, gt=0, description="from connection (or the end of the last response) "
                            "to the end of the request head; then 408 and close")
    body_idle_s: float = Field(default=30.0, gt=0, description="longest pause between body bytes; then close")
    keep_alive_s: float = Field(default=5.0, gt=0, description="idle keep-alive connections are closed after this")


class QueueSettings(BaseModel):
    """Queue behaviour shared by the API (enqueue, backpressure) and the workers."""

    name: str = "cpcnn-embed"
    max_depth: int = Field(default=1000, gt=0, description="queued jobs above which submit answers 503")
    retry_after_s: int = Field(default=5, gt=0)
    retries: int = Field(default=2, ge=0, description="re-runs after a crash or a killed worker")
    job_timeout_s: int = Field(default=900, gt=0)
    rq_result_ttl_s: int = Field(default=0, ge=0, description="RQ keeps finished jobs this long; results live on disk")
    data_ttl_s: int = Field(default=7 * 86400, gt=0, description="finished jobs are pruned after this")


class WorkerTuning(BaseModel):
    """How a worker runs the model: device, batch shape and concurrency."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(default=None, gt=0)
    max_batch: int | None = Field(default=None, gt=0, description="cells per ONNX Runtime call")
    max_wait_ms: float = Field(default=20.0, ge=0, description="wait this long for other jobs' cells")
    slots: int = Field(default=4, gt=0, description="jobs prepared concurrently per worker process")
    heartbeat_s: int = Field(default=5, gt=0)
    maintenance_s: int = Field(default=60, gt=0, description="how often abandoned jobs are requeued")


class PlateSettings(BaseModel):
    """Whole plates read from a volume the service shares with the lab: only under ``roots``."""

    roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="folders plate files may be read from (comma-separated); none turns plate jobs off",
    )
    max_sites: int = Field(default=10_000, gt=0, description="sites one plate may have")
    max_load_data_bytes: int = Field(default=64 * 2**20, gt=0, description="size of an uploaded or named LoadData CSV")

    @field_validator("roots", mode="before")
    @classmethod
    def _split_roots(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [Path(root.strip()) for root in value.split(",") if root.strip()]
        return value


class _Common(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CPCNN_", env_nested_delimiter="__", extra="ignore")

    env: Literal["dev", "prod"] = "prod"
    redis_url: str | None = None
    data_dir: Path | None = None
    models_dir: Path | None = None
    queue: QueueSettings = Field(default_factory=QueueSettings)
    worker: WorkerTuning = Field(default_factory=WorkerTuning)
    plates: PlateSettings = Field(default_factory=PlateSettings)

    def resolved_data_dir(self) -> Path:
        return self.data_dir if self.data_dir is not None else cpcnn_home() / "service"

    def model_store(self) -> ModelStore:
        return ModelStore(self.models_dir)


class ApiSettings(_Common):
    """``cpcnn serve``: without ``redis_url`` the API runs its own in-process worker."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    default_model: str = DEFAULT_MODEL
    api_key: SecretStr | None = None
    metrics_public: bool = Field(default=False, description="serve /metrics without the API key")
    limits: Limits = Field(default_factory=Limits)
    http: HttpTimeouts = Field(default_factory=HttpTimeouts)
    trusted_hosts: Annotated[list[str] | None, NoDecode] = Field(
        default=None,
        description="Host header values served (comma-separated; '*.example.org' wildcards; '*' disables the "
                    "check); default localhost, 127.0.0.1, ::1 and the bind host",
    )
    open_libraries: int = Field(default=8, gt=0, description="reference libraries kept memory-mapped for matching")

    @field_validator("trusted_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [host.strip() for host in value.split(",") if host.strip()]
        return value

    @model_validator(mode="after")
    def _refuse_weak_key(self) -> ApiSettings:
        """An empty key would silently turn authentication off: only ``env=dev`` may do that."""
        if self.api_key is not None:
            key = self.api_key.get_secret_value()
            if not key.strip():
                if self.env != "dev":
                    raise ValueError("CPCNN_API_KEY is set but empty, which would turn authentication off; "
                                     "set a real key (16+ characters) or unset it")
                self.api_key = None
            elif self.env != "dev" and (key.lower() in _PLACEHOLDER_KEYS or len(key) < 16):
                raise ValueError("CPCNN_API_KEY is a placeholder or shorter than 16 characters; set a real key")
        return self

    def allowed_hosts(self) -> tuple[str, ...]:
        """Lower-case Host names the server answers to; ``("*",)`` when the check is off."""
        hosts = self.trusted_hosts if self.trusted_hosts is not None else [*LOCAL_HOSTS, self.host]
        return tuple(dict.fromkeys(host.strip().lower().strip("[]") for host in hosts if host.strip()))

    def warn_if_open(self) -> None:
        """Log loudly when nothing protects the API: no key outside dev, or any Host accepted."""
        if self.api_key is None and self.env != "dev":
            logger.warning("NO API KEY IS SET: anyone who can reach %s:%d can use this API and read every "
                           "result; set CPCNN_API_KEY (or CPCNN_ENV=dev for a local-only server)",
                           self.host, self.port)
        if self.api_key is None and "*" in self.allowed_hosts():
            logger.warning("CPCNN_TRUSTED_HOSTS is '*' and there is no API key: web pages can reach this API "
                           "through DNS rebinding")


class WorkerSettings(_Common):
    """``cpcnn worker``: one model per process, fed from that model's queue."""

    model: str = DEFAULT_MODEL
    name: str | None = None
    burst: bool = False

    @model_validator(mode="after")
    def _need_redis(self) -> WorkerSettings:
        if not self.redis_url:
            raise ValueError("a worker needs CPCNN_REDIS_URL (or --redis-url); 'cpcnn serve' alone needs none")
        return self


def load_settings(cls: type[_Common], **overrides: Any) -> Any:
    """Settings from overrides > env > Docker secrets > defaults; ``None`` overrides are dropped."""
    kwargs = {key: value for key, value in overrides.items() if value is not None}
    if SECRETS_DIR.is_dir():
        kwargs["_secrets_dir"] = SECRETS_DIR
    return cls(**kwargs)

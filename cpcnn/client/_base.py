"""Everything the SDK does that is not I/O: options, request building, responses -> schemas or errors.

``AsyncClient`` (``_async.py``) is the one written source of the methods that do I/O; ``Client``
(``_sync.py``) is generated from it by ``scripts/unasync.py``. Both share this base.

pandas and pyarrow (base dependencies) are imported inside the functions that build tables, so
``import cpcnn.client`` loads only httpx and numpy.
"""

from __future__ import annotations

import io
import logging
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

import httpx
import numpy as np

from cpcnn import __version__
from cpcnn._types import CHANNELS
from cpcnn.client._errors import ApiError, JobFailed, error_from_response
from cpcnn.client._tiff import encode_tiff
from cpcnn.errors import InputError
from cpcnn.io.cells import OBJECT_NUMBER_COLUMN, SITE_KEYS, X_COLUMN, Y_COLUMN, metadata_value
from cpcnn.locations import Locations, load_locations
from cpcnn.schemas import (
    API_KEY_HEADER,
    MEDIA_JSON,
    MEDIA_NPY,
    MEDIA_PARQUET,
    CellsResult,
    JobPublic,
    JobStatus,
)

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger("cpcnn.client")

ImageInput = str | PathLike[str] | bytes | np.ndarray
ImagesInput = Mapping[str, ImageInput] | ImageInput
ResultFormat = Literal["table", "numpy", "json"]
RETRY_STATUSES = frozenset({502, 503, 504})
#: Longest single server-side wait per request (the server caps it too).
LONG_POLL_S = 30.0
#: Default seconds for one HTTP request (``Client(timeout=...)``).
REQUEST_TIMEOUT_S = 120.0
#: Default for how long ``embed``/``embed_many``/``wait`` wait for one job (``Client(job_timeout=...)``).
JOB_TIMEOUT_S = 600.0
TransportT = TypeVar("TransportT")
_METADATA_KEYS = {"plate": "Metadata_Plate", "well": "Metadata_Well", "site": "Metadata_Site"}


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter on 502/503/504 and connection errors; honours Retry-After.

    Resubmitting is safe: the server derives a job's id from the upload, so a retried POST finds
    the job the first attempt created.
    """

    attempts: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to sleep before attempt ``attempt + 1`` (attempt counts from 1)."""
        if retry_after is not None and retry_after.strip().isdigit():
            return min(float(retry_after), self.max_backoff_s)
        base = min(self.backoff_s * 2.0 ** (attempt - 1), self.max_backoff_s)
        return float(base * (0.5 + random.random() / 2))


@dataclass(frozen=True)
class Site:
    """One field of view to embed (see ``Client.embed`` for what each field accepts)."""

    images: ImagesInput
    locations: Any = None
    metadata: Mapping[str, str] | None = None
    channel_order: Sequence[str] | str | None = None


@dataclass(frozen=True)
class Upload:
    """A ready-to-send multipart body; rebuilt into a fresh request on every retry."""

    files: list[tuple[str, tuple[str, bytes, str]]]
    data: dict[str, str | list[str]]


class BaseClient(Generic[TransportT]):
    """Options and translation shared by the sync and async clients; ``TransportT`` is httpx's
    transport type for the side (``transport=`` replaces the network, e.g. ``httpx.MockTransport``)."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = REQUEST_TIMEOUT_S,
        job_timeout: float = JOB_TIMEOUT_S,
        retry: RetryPolicy | int | None = None,
        headers: Mapping[str, str] | None = None,
        transport: TransportT | None = None,
    ) -> None:
        """``timeout``: seconds for one HTTP request (a long-poll request gets its server-side wait on
        top). ``job_timeout``: how long ``embed``, ``embed_many`` and ``wait`` wait for a job unless
        the call passes its own ``timeout``. ``retry``: a ``RetryPolicy`` or a number of attempts."""
        self.url = url.rstrip("/")
        if isinstance(retry, int):
            retry = RetryPolicy(attempts=max(1, retry))
        self.retry = retry or RetryPolicy()
        self.timeout = httpx.Timeout(timeout, connect=min(timeout, 10.0))
        self.job_timeout = job_timeout
        self.headers = {"User-Agent": f"cpcnn-client/{__version__}", **(headers or {})}
        if api_key:
            self.headers[API_KEY_HEADER] = api_key
        self._http = self._connect(transport)

    def _connect(self, transport: TransportT | None) -> Any:
        """The httpx client this side sends with."""
        raise NotImplementedError

    # -- requests -------------------------------------------------------------------------------

    def job_deadline(self, timeout: float | None) -> float:
        """Seconds to wait for a job: the call's ``timeout``, else the client's ``job_timeout``."""
        return self.job_timeout if timeout is None else timeout

    def long_poll_timeout(self, wait: float) -> httpx.Timeout:
        """The client's request timeout plus the ``wait`` seconds the server may hold the request."""
        base = self.timeout
        if base.read is None or wait <= 0:
            return base
        return httpx.Timeout(connect=base.connect, read=base.read + wait, write=base.write, pool=base.pool)

    @staticmethod
    def build_upload(
        site: Site, model: str | None = None, *, detect_nuclei: bool = False, normalization: str | None = None
    ) -> Upload:
        """Normalize the caller's inputs into multipart parts (validating locations locally)."""
        images, locations, channel_order = site.images, site.locations, site.channel_order
        files: list[tuple[str, tuple[str, bytes, str]]] = []
        data: dict[str, str | list[str]] = {}
        if isinstance(images, Mapping):
            if channel_order is not None:
                raise InputError("channel_order is for one multi-channel image, not a mapping of channels")
            for name, source in images.items():
                canonical = _canonical_channel(name)
                files.append((canonical, (f"{canonical}.tif", _image_bytes(source, canonical), "image/tiff")))
        else:
            if channel_order is None:
                raise InputError(f"a multi-channel image needs channel_order, e.g. {','.join(CHANNELS)}")
            order = channel_order if isinstance(channel_order, str) else ",".join(channel_order)
            files.append(("image", ("image.tif", _image_bytes(images, "image"), "image/tiff")))
            data["channel_order"] = order
        if locations is not None:
            files.append(("locations", ("locations.csv", locations_csv(locations), "text/csv")))
        elif detect_nuclei:
            data["detect_nuclei"] = "true"
        for key, value in normalize_metadata(site.metadata).items():
            data[key] = value
        if model:
            data["model"] = model
        if normalization:
            data["normalization"] = normalization
        return Upload(files=files, data=data)

    # -- responses ------------------------------------------------------------------------------

    @staticmethod
    def raise_for_status(response: httpx.Response) -> None:
        if response.is_success:
            return
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        raise error_from_response(response.status_code, body, response.headers.get("Retry-After"))

    @staticmethod
    def parse_job(response: httpx.Response) -> JobPublic:
        return JobPublic.model_validate_json(response.content)

    @staticmethod
    def check_finished(job: JobPublic) -> JobPublic:
        if job.status == JobStatus.FAILED:
            raise JobFailed(job)
        return job

    @staticmethod
    def result_request(fmt: ResultFormat) -> tuple[dict[str, str], str]:
        """(query params, Accept) for a result format: a table travels as Parquet."""
        if fmt == "numpy":
            return {"format": "npy"}, MEDIA_NPY
        if fmt == "table":
            return {"format": "parquet"}, MEDIA_PARQUET
        return {"format": "json"}, MEDIA_JSON

    @staticmethod
    def parse_result(response: httpx.Response, fmt: ResultFormat) -> pd.DataFrame | np.ndarray | CellsResult:
        """Response -> DataFrame (``table``), (N, D) array (``numpy``) or ``CellsResult`` (``json``).

        A server that answers a table request with JSON still yields the same DataFrame.
        """
        media = response.headers.get("content-type", "").split(";")[0].strip()
        if media == MEDIA_NPY:
            return np.load(io.BytesIO(response.content), allow_pickle=False)
        if media == MEDIA_PARQUET:
            return parquet_table(response.content)
        result = CellsResult.model_validate_json(response.content)
        return result if fmt == "json" else cells_columns(result)

    @staticmethod
    def log_request(request: httpx.Request, response: httpx.Response) -> None:
        logger.info('HTTP Request: %s %s "%d %s"', request.method, request.url, response.status_code,
                    response.reason_phrase)


def _canonical_channel(name: str) -> str:
    for channel in CHANNELS:
        if channel.lower() == str(name).strip().lower():
            return channel
    raise InputError(f"unknown channel {name!r}; expected {', '.join(CHANNELS)}")


def _image_bytes(source: ImageInput, name: str) -> bytes:
    if isinstance(source, np.ndarray):
        return encode_tiff(source)
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    path = Path(source)
    if not path.is_file():
        raise InputError(f"{name}: file {path} does not exist")
    return path.read_bytes()


def locations_csv(locations: Any) -> bytes:
    """Any locations the library reads (DataFrame, (N, 2) array, CSV/JSON path) -> CSV bytes, with the
    cells' object numbers (the input's ``ObjectNumber``, else 1..N) so results can be joined back."""
    cells = load_locations(locations)
    lines = ["ObjectNumber,Nuclei_Location_Center_X,Nuclei_Location_Center_Y"]
    lines += [f"{n},{x!r},{y!r}" for n, (x, y) in zip(cells.object_numbers.tolist(), cells.centers.tolist(), strict=True)]
    return ("\n".join(lines) + "\n").encode()


def normalize_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """``{"plate": ..}`` or ``{"Metadata_Plate": ..}`` -> form fields plate/well/site."""
    fields: dict[str, str] = {}
    reverse = {v.lower(): k for k, v in _METADATA_KEYS.items()}
    for key, value in (metadata or {}).items():
        lowered = str(key).lower()
        field = lowered if lowered in _METADATA_KEYS else reverse.get(lowered)
        if field is None:
            raise InputError(f"unknown metadata key {key!r}; use plate, well and site")
        fields[field] = str(value)
    return fields


def cells_columns(result: CellsResult) -> pd.DataFrame:
    """CellsResult -> the ``cpcnn embed`` columns."""
    import pandas as pd

    n_cells = result.n_cells
    columns: dict[str, Any] = {}
    for key in (*SITE_KEYS, *(k for k in result.metadata if k not in SITE_KEYS)):
        value = metadata_value(key, result.metadata.get(key, ""))
        columns[key] = np.full(n_cells, value, dtype=np.int64 if isinstance(value, int) else object)
    columns["Metadata_Model"] = np.array([result.model] * n_cells, dtype=object)
    cells = Locations.numbered(np.asarray(result.locations, np.float64).reshape(n_cells, 2), result.object_numbers)
    columns[OBJECT_NUMBER_COLUMN] = cells.object_numbers
    columns[X_COLUMN] = cells.centers[:, 0]
    columns[Y_COLUMN] = cells.centers[:, 1]
    features = np.asarray(result.features, np.float32).reshape(n_cells, result.feature_size)
    for index in range(result.feature_size):
        columns[f"{result.feature_prefix}_{index}"] = features[:, index]
    return pd.DataFrame(columns)


def parquet_table(content: bytes) -> pd.DataFrame:
    """Parquet bytes -> a DataFrame."""
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(content)).to_pandas()


def concat_tables(parts: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Row-wise concatenation of DataFrames, in order (no parts: an empty DataFrame)."""
    import pandas as pd

    parts = list(parts)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def is_retryable(exc: BaseException | None, response: httpx.Response | None) -> bool:
    if response is not None:
        return response.status_code in RETRY_STATUSES
    return isinstance(exc, httpx.TransportError)


__all__ = ["ApiError", "BaseClient", "RetryPolicy", "Site", "Upload"]

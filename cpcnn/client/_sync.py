"""``Client``: the blocking SDK. Only ``_send`` and sleeping differ from ``AsyncClient``."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import httpx

from cpcnn.client._base import (
    LONG_POLL_S,
    BaseClient,
    ImagesInput,
    ResultFormat,
    RetryPolicy,
    Site,
    Upload,
    concat_tables,
    is_retryable,
)
from cpcnn.client._errors import JobTimeout, TransportError
from cpcnn.client._progress import progress_bar
from cpcnn.client._tables import (
    FeaturesInput,
    TableInput,
    inline_profiles,
    match_body,
    matches_table,
    parquet_table,
    ref,
    stored_table_id,
    table_upload,
    with_features,
)
from cpcnn.schemas import (
    Evaluation,
    Health,
    JobPublic,
    LibraryList,
    LibraryPublic,
    MatchResult,
    ModelList,
    ModelPublic,
    Readiness,
    TableList,
    TablePublic,
    TransformList,
    TransformPublic,
)


class Client(BaseClient):
    """Talk to a cpcnn server: ``Client("http://host:8000", api_key=...)``; use as a context manager."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        retry: RetryPolicy | int | None = None,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(url, api_key=api_key, timeout=timeout, retry=retry, headers=headers)
        self._http = httpx.Client(base_url=self.url, headers=self.headers, timeout=self.timeout, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- jobs -----------------------------------------------------------------------------------

    def embed(
        self,
        images: ImagesInput,
        locations: Any = None,
        metadata: Mapping[str, str] | None = None,
        model: str | None = None,
        *,
        detect_nuclei: bool = False,
        normalization: str | None = None,
        channel_order: Sequence[str] | str | None = None,
        timeout: float = 600.0,
    ) -> Any:
        """One field of view -> one row per cell, the columns of ``cpcnn embed``.

        ``images``: channel name -> file path, bytes or 2-D array (DNA, RNA, ER, AGP, Mito), or one
        multi-channel TIFF/array with ``channel_order``. ``locations``: a DataFrame, an (N, 2) array of
        x, y or a CSV/JSON path; omit it with ``detect_nuclei=True`` to find nuclei on the server.
        ``metadata``: plate/well/site. Returns a DataFrame when pandas is installed, else a dict of
        column arrays. Raises ``JobFailed``, ``BadRequest`` etc. with the server's message.
        """
        job = self.submit(images, locations, metadata, model, detect_nuclei=detect_nuclei,
                          normalization=normalization, channel_order=channel_order, wait=min(timeout, LONG_POLL_S))
        job = self.wait(job.id, timeout=timeout) if not job.status.finished else self.check_finished(job)
        return self.result(job.id)

    def embed_many(
        self,
        sites: Iterable[Site | Mapping[str, Any]],
        *,
        model: str | None = None,
        detect_nuclei: bool = False,
        normalization: str | None = None,
        max_in_flight: int = 4,
        progress: bool | None = None,
        timeout: float = 600.0,
    ) -> Any:
        """Many fields of view, ``max_in_flight`` at a time -> one table, rows in site order.

        ``progress=None`` shows a bar when there is more than one site and stderr is a terminal.
        """
        resolved = [s if isinstance(s, Site) else Site(**s) for s in sites]
        pending: deque[str] = deque()
        tables: list[Any] = []
        with progress_bar(len(resolved), progress) as bar:
            for site in resolved:
                job = self.submit(site.images, site.locations, site.metadata, model, detect_nuclei=detect_nuclei,
                                  normalization=normalization, channel_order=site.channel_order)
                pending.append(job.id)
                if len(pending) >= max_in_flight:
                    tables.append(self._collect(pending.popleft(), timeout))
                    bar.update(1)
            while pending:
                tables.append(self._collect(pending.popleft(), timeout))
                bar.update(1)
        return concat_tables(tables)

    def _collect(self, job_id: str, timeout: float) -> Any:
        self.wait(job_id, timeout=timeout)
        return self.result(job_id)

    def submit(
        self,
        images: ImagesInput,
        locations: Any = None,
        metadata: Mapping[str, str] | None = None,
        model: str | None = None,
        *,
        detect_nuclei: bool = False,
        normalization: str | None = None,
        channel_order: Sequence[str] | str | None = None,
        wait: float = 0.0,
    ) -> JobPublic:
        """Queue one field of view; returns the job (finished if it did so within ``wait`` seconds)."""
        upload = self.build_upload(images, locations, metadata, model, detect_nuclei=detect_nuclei,
                                   normalization=normalization, channel_order=channel_order)
        return self.parse_job(self._send("POST", "/v1/jobs", params={"wait": wait}, upload=upload))

    def job(self, job_id: str, *, wait: float = 0.0) -> JobPublic:
        return self.parse_job(self._send("GET", f"/v1/jobs/{job_id}", params={"wait": wait}))

    def wait(self, job_id: str, *, timeout: float = 600.0) -> JobPublic:
        """Block until the job succeeds (returned) or fails (``JobFailed``); ``JobTimeout`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            job = self.job(job_id, wait=max(0.0, min(remaining, LONG_POLL_S)))
            if job.status.finished:
                return self.check_finished(job)
            if time.monotonic() >= deadline:
                raise JobTimeout(f"job {job_id} is still {job.status.value} after {timeout:g} s", job_id=job_id)

    def result(self, job_id: str, *, format: ResultFormat = "table") -> Any:
        """A succeeded job's cells: ``table`` (DataFrame or column dict), ``numpy`` (N, D) or ``json``."""
        params, accept = self.result_request(format)
        response = self._send("GET", f"/v1/jobs/{job_id}/result", params=params, headers={"Accept": accept})
        return self.parse_result(response, format)

    def delete(self, job_id: str) -> None:
        self._send("DELETE", f"/v1/jobs/{job_id}")

    # -- profiles: tables, sphering, libraries, evaluation --------------------------------------

    def upload_table(
        self, table: TableInput, *, features: FeaturesInput = None, name: str | None = None
    ) -> TablePublic:
        """Store a profile table on the server (CSV/CSV.gz/Parquet path, bytes, DataFrame or column dict).

        ``features`` names the feature columns, names or glob patterns such as ``"efficientnet_*"``
        (default: every numeric column not named ``Metadata_*``); every method that reads a table's
        columns takes the same ``features``. The same upload returns the same table, so retrying is safe.
        """
        upload = table_upload(table, features=features, name=name)
        return TablePublic.model_validate_json(self._send("POST", "/v1/tables", upload=upload).content)

    def tables(self) -> list[TablePublic]:
        return TableList.model_validate_json(self._send("GET", "/v1/tables").content).data

    def get_table(self, table_id: Any) -> TablePublic:
        return TablePublic.model_validate_json(self._send("GET", f"/v1/tables/{ref(table_id, 'table')}").content)

    def download_table(self, table_id: Any) -> Any:
        """A stored table's rows: a DataFrame with pandas, else a dict of column arrays."""
        response = self._send("GET", f"/v1/tables/{ref(table_id, 'table')}/data", params={"format": "parquet"})
        return parquet_table(response.content)

    def delete_table(self, table_id: Any) -> None:
        self._send("DELETE", f"/v1/tables/{ref(table_id, 'table')}")

    def fit_sphering(
        self, table: TableInput, *, controls: str, lam: float, method: str = "zca", features: FeaturesInput = None
    ) -> TransformPublic:
        """Fit ZCA sphering on the rows selected by ``controls`` ("COLUMN=VALUE"); uploads ``table`` unless it is an id."""
        body = {"table_id": self._table_id(table), "controls": controls, "lambda": lam, "method": method}
        body = with_features(body, features)
        return TransformPublic.model_validate_json(self._send("POST", "/v1/transforms", json=body).content)

    def transforms(self) -> list[TransformPublic]:
        return TransformList.model_validate_json(self._send("GET", "/v1/transforms").content).data

    def get_transform(self, transform_id: Any) -> TransformPublic:
        path = f"/v1/transforms/{ref(transform_id, 'transform')}"
        return TransformPublic.model_validate_json(self._send("GET", path).content)

    def delete_transform(self, transform_id: Any) -> None:
        self._send("DELETE", f"/v1/transforms/{ref(transform_id, 'transform')}")

    def sphere_table(self, transform_id: Any, table: TableInput, *, features: FeaturesInput = None) -> TablePublic:
        """Apply a transform on the server and keep the sphered table there (e.g. to build a library)."""
        path = f"/v1/transforms/{ref(transform_id, 'transform')}/apply"
        body = with_features({"table_id": self._table_id(table)}, features)
        return TablePublic.model_validate_json(self._send("POST", path, json=body).content)

    def apply_sphering(self, transform_id: Any, table: TableInput, *, features: FeaturesInput = None) -> Any:
        """Sphere ``table`` with a stored transform -> the sphered rows (DataFrame, or dict without pandas)."""
        return self.download_table(self.sphere_table(transform_id, table, features=features).id)

    def create_library(
        self, table: TableInput, *, id_col: str, annotations: Sequence[str] = (), features: FeaturesInput = None
    ) -> LibraryPublic:
        """Build a reference library (rows sharing ``id_col`` are averaged); uploads ``table`` unless it is an id."""
        body = {"table_id": self._table_id(table), "id_column": id_col, "annotations": list(annotations)}
        body = with_features(body, features)
        return LibraryPublic.model_validate_json(self._send("POST", "/v1/libraries", json=body).content)

    def libraries(self) -> list[LibraryPublic]:
        return LibraryList.model_validate_json(self._send("GET", "/v1/libraries").content).data

    def get_library(self, library_id: Any) -> LibraryPublic:
        return LibraryPublic.model_validate_json(self._send("GET", f"/v1/libraries/{ref(library_id, 'library')}").content)

    def delete_library(self, library_id: Any) -> None:
        self._send("DELETE", f"/v1/libraries/{ref(library_id, 'library')}")

    def match(
        self,
        library_id: Any,
        queries: Any,
        *,
        id_col: str | None = None,
        top_k: int = 10,
        leave_one_out: bool = False,
        features: FeaturesInput = None,
    ) -> Any:
        """Top-k cosine matches -> long table (query_id, rank, library_id, score, annotations...).

        ``queries``: a table (id, path, bytes, DataFrame; uploaded unless an id), a (Q, D) array or
        ``{"features": (Q, D), "ids": (Q,)}`` in the library's feature order. Returns a DataFrame with
        pandas, else a list of row dicts.
        """
        profiles = inline_profiles(queries)
        table_id = None if profiles is not None else self._table_id(queries)
        body = match_body(table_id=table_id, profiles=profiles, id_col=id_col, top_k=top_k, leave_one_out=leave_one_out,
                          features=features)
        response = self._send("POST", f"/v1/libraries/{ref(library_id, 'library')}/match", json=body)
        return matches_table(MatchResult.model_validate_json(response.content))

    def evaluate(
        self,
        table: TableInput,
        *,
        id_col: str,
        annotation: str,
        sep: str | None = "|",
        features: FeaturesInput = None,
        convention: str = "copairs",
    ) -> dict[str, Any]:
        """Retrieval metrics (convention, mean_average_precision, ..._interpolated, folds_of_enrichment, n_queries, ...).

        ``convention``: "copairs" (default) or "paper" (the CNN-1 paper's published evaluation code).
        """
        body = {"table_id": self._table_id(table), "id_column": id_col, "annotation": annotation, "separator": sep,
                "convention": convention}
        body = with_features(body, features)
        return Evaluation.model_validate_json(self._send("POST", "/v1/evaluate", json=body).content).model_dump()

    def _table_id(self, table: TableInput) -> str:
        stored = stored_table_id(table)
        return stored if stored is not None else self.upload_table(table).id

    # -- models and health ----------------------------------------------------------------------

    def models(self) -> list[ModelPublic]:
        return ModelList.model_validate_json(self._send("GET", "/v1/models").content).data

    def model(self, name: str) -> ModelPublic:
        return ModelPublic.model_validate_json(self._send("GET", f"/v1/models/{name}").content)

    def health(self) -> Health:
        return Health.model_validate_json(self._send("GET", "/healthz").content)

    def ready(self) -> Readiness:
        """Readiness, without raising when the server is not ready (503 carries the reasons)."""
        response = self._http.get("/readyz")
        if response.status_code not in (200, 503):
            self.raise_for_status(response)
        return Readiness.model_validate_json(response.content)

    # -- transport ------------------------------------------------------------------------------

    def _send(
        self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None, upload: Upload | None = None, json: Any = None,
    ) -> httpx.Response:
        attempt = 0
        while True:
            attempt += 1
            response: httpx.Response | None = None
            error: httpx.TransportError | None = None
            try:
                request = self._http.build_request(
                    method, path, params=params, headers=headers,
                    files=upload.files if upload else None, data=upload.data if upload else None, json=json,
                )
                response = self._http.send(request)
                self.log_request(request, response)
            except httpx.TransportError as exc:
                error = exc
            if not is_retryable(error, response) or attempt >= self.retry.attempts:
                if error is not None:
                    raise TransportError(f"{method} {self.url}{path} failed: {error}") from error
                assert response is not None
                self.raise_for_status(response)
                return response
            time.sleep(self.retry.delay(attempt, response.headers.get("Retry-After") if response else None))

"""``AsyncClient``: every SDK method that does I/O, written once (``_sync.py`` is generated from this file).

Edit this file, then run ``python scripts/unasync.py``; what cannot be spelled the same way on both
sides (sleeping, running sites at once) lives in ``_concurrency.py``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

import httpx
from pydantic import BaseModel

from cpcnn.client._base import (
    LONG_POLL_S,
    BaseClient,
    ImagesInput,
    ResultFormat,
    Site,
    Upload,
    concat_tables,
    is_retryable,
    parquet_table,
)
from cpcnn.client._concurrency import async_map_bounded, async_sleep
from cpcnn.client._errors import JobTimeout, PlateFailed, TransportError
from cpcnn.client._progress import progress_bar
from cpcnn.client._tables import (
    FeaturesInput,
    TableInput,
    inline_profiles,
    match_body,
    matches_table,
    ref,
    stored_table_id,
    table_upload,
    with_features,
)
from cpcnn.schemas import (
    CellsResult,
    CropPreview,
    Evaluation,
    Health,
    JobList,
    JobPublic,
    LibraryList,
    LibraryPublic,
    MatchResult,
    ModelList,
    ModelPublic,
    PlateList,
    PlatePublic,
    PlateStatus,
    ProfileMap,
    Readiness,
    TableList,
    TablePublic,
    Throughput,
    TransformList,
    TransformPublic,
    WorkerList,
)

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

SchemaT = TypeVar("SchemaT", bound=BaseModel)


class AsyncClient(BaseClient[httpx.AsyncBaseTransport]):
    """Talk to a cpcnn server: ``async with AsyncClient("http://host:8000", api_key=...) as client:``.

    Options (``api_key``, ``timeout``, ``job_timeout``, ``retry``, ``headers``, ``transport``): see
    ``BaseClient.__init__``.
    """

    _http: httpx.AsyncClient

    def _connect(self, transport: httpx.AsyncBaseTransport | None) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=self.timeout, transport=transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- jobs -----------------------------------------------------------------------------------

    async def embed(
        self,
        images: ImagesInput,
        locations: Any = None,
        metadata: Mapping[str, str] | None = None,
        model: str | None = None,
        *,
        detect_nuclei: bool = False,
        normalization: str | None = None,
        channel_order: Sequence[str] | str | None = None,
        timeout: float | None = None,
    ) -> pd.DataFrame:
        """One field of view -> one row per cell, the columns of ``cpcnn embed``.

        ``images``: channel name -> file path, bytes or 2-D array (DNA, RNA, ER, AGP, Mito), or one
        multi-channel TIFF/array with ``channel_order``. ``locations``: a DataFrame, an (N, 2) array of
        x, y or a CSV/JSON path; omit it with ``detect_nuclei=True`` to find nuclei on the server.
        ``metadata``: plate/well/site. ``timeout``: seconds to wait for the job (default: the
        client's ``job_timeout``). Raises ``JobFailed``, ``InputError`` etc. with the server's message.
        """
        deadline = self.job_deadline(timeout)
        job = await self.submit(
            images, locations, metadata, model, detect_nuclei=detect_nuclei, normalization=normalization,
            channel_order=channel_order, wait=min(deadline, LONG_POLL_S),
        )
        job = await self.wait(job.id, timeout=deadline) if not job.status.finished else self.check_finished(job)
        return await self.result(job.id)

    async def embed_many(
        self,
        sites: Iterable[Site | Mapping[str, Any]],
        *,
        model: str | None = None,
        detect_nuclei: bool = False,
        normalization: str | None = None,
        max_in_flight: int = 4,
        progress: bool | None = None,
        timeout: float | None = None,
    ) -> pd.DataFrame:
        """Many fields of view -> one table, rows in site order.

        ``max_in_flight``: how many sites' jobs may be submitted but not yet finished at once; each
        site is submitted, waited for and its result fetched before its slot takes the next site
        (slots are threads in the blocking client, tasks in this one). The first failure is raised at
        once and the sites not yet started are never submitted. ``timeout`` applies to each site's job.
        ``progress=None`` shows a bar when there is more than one site and stderr is a terminal.
        """
        resolved = [s if isinstance(s, Site) else Site(**s) for s in sites]

        async def one(site: Site) -> pd.DataFrame:
            return await self.embed(
                site.images, site.locations, site.metadata, model, detect_nuclei=detect_nuclei,
                normalization=normalization, channel_order=site.channel_order, timeout=timeout,
            )

        with progress_bar(len(resolved), progress) as bar:
            tables = await async_map_bounded(one, resolved, max_in_flight, bar.update)
        return concat_tables(tables)

    async def submit(
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
        site = Site(images, locations, metadata, channel_order)
        upload = self.build_upload(site, model, detect_nuclei=detect_nuclei, normalization=normalization)
        return self.parse_job(await self._send("POST", "/v1/jobs", wait=wait, upload=upload))

    async def job(self, job_id: str, *, wait: float = 0.0) -> JobPublic:
        """The job's state now, or once it finishes within ``wait`` seconds."""
        return self.parse_job(await self._send("GET", f"/v1/jobs/{job_id}", wait=wait))

    async def wait(self, job_id: str, *, timeout: float | None = None) -> JobPublic:
        """Until the job succeeds (returned) or fails (``JobFailed``); ``JobTimeout`` after ``timeout``
        seconds (default: the client's ``job_timeout``)."""
        timeout = self.job_deadline(timeout)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            job = await self.job(job_id, wait=max(0.0, min(remaining, LONG_POLL_S)))
            if job.status.finished:
                return self.check_finished(job)
            if time.monotonic() >= deadline:
                raise JobTimeout(f"job {job_id} is still {job.status.value} after {timeout:g} s", job_id=job_id)

    @overload
    async def result(self, job_id: str, *, format: Literal["table"] = "table") -> pd.DataFrame: ...

    @overload
    async def result(self, job_id: str, *, format: Literal["numpy"]) -> np.ndarray: ...

    @overload
    async def result(self, job_id: str, *, format: Literal["json"]) -> CellsResult: ...

    async def result(
        self, job_id: str, *, format: ResultFormat = "table"
    ) -> pd.DataFrame | np.ndarray | CellsResult:
        """A succeeded job's cells: ``table`` (DataFrame), ``numpy`` ((N, D) float32) or ``json``."""
        params, accept = self.result_request(format)
        response = await self._send("GET", f"/v1/jobs/{job_id}/result", params=params, headers={"Accept": accept})
        return self.parse_result(response, format)

    async def delete(self, job_id: str) -> None:
        await self._send("DELETE", f"/v1/jobs/{job_id}")

    # -- whole plates ----------------------------------------------------------------------------

    async def profile_plate(
        self,
        load_data: str | os.PathLike[str] | bytes,
        *,
        model: str | None,
        locations: str | os.PathLike[str] | None = None,
        detect_nuclei: bool = False,
        illum: bool = False,
        platemap: str | os.PathLike[str] | None = None,
        channels: Mapping[str, str] | None = None,
        wait: bool = True,
        progress: bool | None = True,
        timeout: float | None = None,
    ) -> pd.DataFrame | PlatePublic:
        """Profile a whole plate on the server -> its well profiles (``wait=False``: the plate job at once).

        ``load_data``: the LoadData CSV's path on the volume the server shares (its PathName values may
        be relative to it), or the CSV's bytes (then every path in it must be absolute). ``locations``
        (a nuclei table or DeepProfiler locations folder) and ``platemap`` are server paths too; give
        ``locations`` or ``detect_nuclei=True``. ``channels``: LoadData names of model channels, e.g.
        ``{"DNA": "OrigHoechst"}``. ``model=None``: the server's default. ``timeout``: seconds to wait
        (default: none). Raises ``PlateFailed`` when every site failed or the plate was cancelled.
        """
        data: dict[str, Any] = {"detect_nuclei": str(detect_nuclei).lower(), "illum": str(illum).lower()}
        if model is not None:
            data["model"] = model
        if locations is not None:
            data["locations"] = os.fspath(locations)
        if platemap is not None:
            data["platemap"] = os.fspath(platemap)
        if channels:
            data["channels"] = ",".join(f"{k}={v}" for k, v in channels.items())
        if isinstance(load_data, bytes):
            upload = Upload(files=[("load_data", ("load_data.csv", load_data, "text/csv"))], data=data)
        else:
            upload = Upload(files=[], data={"load_data": os.fspath(load_data), **data})
        plate = await self._parse(PlatePublic, "POST", "/v1/plates", upload=upload)
        if not wait:
            return plate
        plate = await self.wait_plate(plate.id, progress=progress, timeout=timeout)
        return await self.plate_wells(plate.id)

    async def wait_plate(
        self, plate_id: str, *, progress: bool | None = True, timeout: float | None = None, poll_s: float = 1.0
    ) -> PlatePublic:
        """Until the plate finishes (returned), showing sites resolved on a progress bar; ``PlateFailed``
        when it failed or was cancelled, ``JobTimeout`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        plate = await self.plate(plate_id)
        with progress_bar(plate.progress.sites, progress) as bar:
            shown = 0
            while True:
                resolved = plate.progress.done + plate.progress.failed
                bar.update(resolved - shown)
                shown = resolved
                if plate.status.finished:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    raise JobTimeout(f"plate {plate_id} is still {plate.status.value} after {timeout:g} s",
                                     job_id=plate_id)
                await async_sleep(poll_s)
                plate = await self.plate(plate_id)
        if plate.status != PlateStatus.SUCCEEDED:
            raise PlateFailed(plate)
        return plate

    async def plate(self, plate_id: str) -> PlatePublic:
        """A plate's progress: sites done, failed and pending, cells, cells/s, ETA."""
        return await self._parse(PlatePublic, "GET", f"/v1/plates/{plate_id}")

    async def plates(self) -> list[PlatePublic]:
        listing = await self._parse(PlateList, "GET", "/v1/plates")
        return listing.data

    async def cancel_plate(self, plate_id: str) -> PlatePublic:
        """Cancel a plate: pending sites are dropped, done sites kept (submit it again to resume)."""
        return await self._parse(PlatePublic, "DELETE", f"/v1/plates/{plate_id}")

    async def plate_wells(self, plate_id: str) -> pd.DataFrame:
        """A finished plate's well profiles (mean of site medians, platemap columns joined)."""
        response = await self._send("GET", f"/v1/plates/{plate_id}/wells", params={"format": "parquet"})
        return parquet_table(response.content)

    async def plate_sites(self, plate_id: str) -> pd.DataFrame:
        """A finished plate's site profiles (median of each site's cells)."""
        response = await self._send("GET", f"/v1/plates/{plate_id}/sites", params={"format": "parquet"})
        return parquet_table(response.content)

    async def plate_cells(self, plate_id: str, site: str) -> pd.DataFrame:
        """One done site's cells; ``site`` is its ``Plate__Well__Site`` name."""
        response = await self._send("GET", f"/v1/plates/{plate_id}/cells/{site}", params={"format": "parquet"})
        return parquet_table(response.content)
    async def recent_jobs(self, *, limit: int = 20) -> list[JobPublic]:
        """The jobs whose state changed last, newest first (at most 200)."""
        response = await self._send("GET", "/v1/jobs", params={"limit": limit})
        return JobList.model_validate_json(response.content).data

    async def preview_crops(
        self,
        images: ImagesInput,
        locations: Any = None,
        *,
        cells: Sequence[int] = (),
        composite: bool = True,
        detect_nuclei: bool = False,
        model: str | None = None,
        normalization: str | None = None,
        channel_order: Sequence[str] | str | None = None,
    ) -> CropPreview:
        """A field of view without a job: its nuclei, a false-colour composite (PNG data URL) and the
        normalized crops of the ``cells`` rows (at most 16), one 8-bit PNG per channel."""
        upload = self.build_upload(Site(images, locations, None, channel_order), model, detect_nuclei=detect_nuclei,
                                   normalization=normalization)
        upload.data["composite"] = "true" if composite else "false"
        upload.data["cells"] = ",".join(str(int(row)) for row in cells)
        return await self._parse(CropPreview, "POST", "/v1/crops/preview", upload=upload)

    # -- profiles: tables, sphering, libraries, evaluation --------------------------------------

    async def upload_table(
        self, table: TableInput, *, features: FeaturesInput = None, name: str | None = None
    ) -> TablePublic:
        """Store a profile table on the server (CSV/CSV.gz/Parquet path, bytes, DataFrame or column dict).

        ``features`` names the feature columns, names or glob patterns such as ``"efficientnet_*"``
        (default: every numeric column not named ``Metadata_*``); every method that reads a table's
        columns takes the same ``features``. The same upload returns the same table, so retrying is safe.
        """
        upload = table_upload(table, features=features, name=name)
        return await self._parse(TablePublic, "POST", "/v1/tables", upload=upload)

    async def tables(self) -> list[TablePublic]:
        listing = await self._parse(TableList, "GET", "/v1/tables")
        return listing.data

    async def get_table(self, table_id: Any) -> TablePublic:
        return await self._parse(TablePublic, "GET", f"/v1/tables/{ref(table_id, 'table')}")

    async def download_table(self, table_id: Any) -> pd.DataFrame:
        """A stored table's rows."""
        response = await self._send("GET", f"/v1/tables/{ref(table_id, 'table')}/data", params={"format": "parquet"})
        return parquet_table(response.content)

    async def table_map(
        self, table_id: Any, *, method: Literal["pca", "umap"] = "pca", max_rows: int = 5000,
        features: FeaturesInput = None,
    ) -> ProfileMap:
        """A stored table's profiles in 2-D (PCA; UMAP when the server has umap-learn) with their metadata."""
        params: dict[str, Any] = {"method": method, "max_rows": max_rows}
        if features is not None:
            params["features"] = [features] if isinstance(features, str) else list(features)
        response = await self._send("GET", f"/v1/tables/{ref(table_id, 'table')}/map", params=params)
        return ProfileMap.model_validate_json(response.content)

    async def delete_table(self, table_id: Any) -> None:
        await self._send("DELETE", f"/v1/tables/{ref(table_id, 'table')}")

    async def fit_sphering(
        self, table: TableInput, *, controls: str, lam: float, method: str = "zca", features: FeaturesInput = None
    ) -> TransformPublic:
        """Fit ZCA sphering on the rows selected by ``controls`` ("COLUMN=VALUE"); uploads ``table`` unless it is an id."""
        fields = {"controls": controls, "lambda": lam, "method": method}
        return await self._post_table(TransformPublic, "/v1/transforms", table, features, fields)

    async def transforms(self) -> list[TransformPublic]:
        listing = await self._parse(TransformList, "GET", "/v1/transforms")
        return listing.data

    async def get_transform(self, transform_id: Any) -> TransformPublic:
        return await self._parse(TransformPublic, "GET", f"/v1/transforms/{ref(transform_id, 'transform')}")

    async def delete_transform(self, transform_id: Any) -> None:
        await self._send("DELETE", f"/v1/transforms/{ref(transform_id, 'transform')}")

    async def sphere_table(self, transform_id: Any, table: TableInput, *, features: FeaturesInput = None) -> TablePublic:
        """Apply a transform on the server and keep the sphered table there (e.g. to build a library)."""
        path = f"/v1/transforms/{ref(transform_id, 'transform')}/apply"
        return await self._post_table(TablePublic, path, table, features, {})

    async def apply_sphering(
        self, transform_id: Any, table: TableInput, *, features: FeaturesInput = None
    ) -> pd.DataFrame:
        """Sphere ``table`` with a stored transform -> the sphered rows."""
        sphered = await self.sphere_table(transform_id, table, features=features)
        return await self.download_table(sphered.id)

    async def create_library(
        self, table: TableInput, *, id_col: str, annotations: Sequence[str] = (), features: FeaturesInput = None
    ) -> LibraryPublic:
        """Build a reference library (rows sharing ``id_col`` are averaged); uploads ``table`` unless it is an id."""
        fields = {"id_column": id_col, "annotations": list(annotations)}
        return await self._post_table(LibraryPublic, "/v1/libraries", table, features, fields)

    async def libraries(self) -> list[LibraryPublic]:
        listing = await self._parse(LibraryList, "GET", "/v1/libraries")
        return listing.data

    async def get_library(self, library_id: Any) -> LibraryPublic:
        return await self._parse(LibraryPublic, "GET", f"/v1/libraries/{ref(library_id, 'library')}")

    async def delete_library(self, library_id: Any) -> None:
        await self._send("DELETE", f"/v1/libraries/{ref(library_id, 'library')}")

    async def match(
        self,
        library_id: Any,
        queries: Any,
        *,
        id_col: str | None = None,
        top_k: int = 10,
        leave_one_out: bool = False,
        features: FeaturesInput = None,
    ) -> pd.DataFrame:
        """Top-k cosine matches -> long table (query_id, rank, library_id, score, annotations...).

        ``queries``: a table (id, path, bytes, DataFrame; uploaded unless an id), a (Q, D) array or
        ``{"features": (Q, D), "ids": (Q,)}`` in the library's feature order.
        """
        profiles = inline_profiles(queries)
        table_id = None if profiles is not None else await self._table_id(queries)
        body = match_body(table_id=table_id, profiles=profiles, id_col=id_col, top_k=top_k, leave_one_out=leave_one_out,
                          features=features)
        path = f"/v1/libraries/{ref(library_id, 'library')}/match"
        return matches_table(await self._parse(MatchResult, "POST", path, json=body))

    async def evaluate(
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
        Returns the fields of ``cpcnn.schemas.Evaluation`` as a dict.
        """
        fields = {"id_column": id_col, "annotation": annotation, "separator": sep, "convention": convention}
        evaluation = await self._post_table(Evaluation, "/v1/evaluate", table, features, fields)
        return evaluation.model_dump()

    async def _post_table(
        self, schema: type[SchemaT], path: str, table: TableInput, features: FeaturesInput, fields: dict[str, Any]
    ) -> SchemaT:
        """POST ``fields`` about ``table`` (uploaded first unless it is a stored id) and its ``features``."""
        body = with_features({"table_id": await self._table_id(table), **fields}, features)
        return await self._parse(schema, "POST", path, json=body)

    async def _table_id(self, table: TableInput) -> str:
        stored = stored_table_id(table)
        if stored is not None:
            return stored
        uploaded = await self.upload_table(table)
        return uploaded.id

    # -- models and health ----------------------------------------------------------------------

    async def models(self) -> list[ModelPublic]:
        listing = await self._parse(ModelList, "GET", "/v1/models")
        return listing.data

    async def model(self, name: str) -> ModelPublic:
        return await self._parse(ModelPublic, "GET", f"/v1/models/{name}")

    async def workers(self) -> WorkerList:
        """Live workers (host, provider, models, batch size, last heartbeat) and the queue depth."""
        return await self._parse(WorkerList, "GET", "/v1/workers")

    async def throughput(self, *, minutes: int = 10) -> Throughput:
        """Cells of the jobs that finished in each of the last ``minutes`` (1 to 60)."""
        response = await self._send("GET", "/v1/throughput", params={"minutes": minutes})
        return Throughput.model_validate_json(response.content)

    async def health(self) -> Health:
        return await self._parse(Health, "GET", "/healthz")

    async def ready(self) -> Readiness:
        """Readiness, without raising when the server is not ready (503 carries the reasons)."""
        response = await self._http.get("/readyz")
        if response.status_code not in (200, 503):
            self.raise_for_status(response)
        return Readiness.model_validate_json(response.content)

    # -- transport ------------------------------------------------------------------------------

    async def _parse(
        self, schema: type[SchemaT], method: str, path: str, *, upload: Upload | None = None, json: Any = None
    ) -> SchemaT:
        """Send, then validate the JSON answer as ``schema``."""
        response = await self._send(method, path, upload=upload, json=json)
        return schema.model_validate_json(response.content)

    async def _send(
        self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None, upload: Upload | None = None, json: Any = None,
        wait: float | None = None,
    ) -> httpx.Response:
        """One request with the retry policy; ``wait``: a long poll, given that much longer to answer."""
        if wait is not None:
            params = {**(params or {}), "wait": wait}
        timeout = self.long_poll_timeout(wait or 0.0)
        attempt = 0
        while True:
            attempt += 1
            response: httpx.Response | None = None
            error: httpx.TransportError | None = None
            try:
                request = self._http.build_request(
                    method, path, params=params, headers=headers, timeout=timeout,
                    files=upload.files if upload else None, data=upload.data if upload else None, json=json,
                )
                response = await self._http.send(request)
                self.log_request(request, response)
            except httpx.TransportError as exc:
                error = exc
            if not is_retryable(error, response) or attempt >= self.retry.attempts:
                if error is not None:
                    raise TransportError(f"{method} {self.url}{path} failed: {error}") from error
                assert response is not None
                self.raise_for_status(response)
                return response
            await async_sleep(self.retry.delay(attempt, response.headers.get("Retry-After") if response else None))

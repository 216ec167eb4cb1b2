"""``AsyncClient``: the asyncio SDK, method for method the same as ``Client``."""

from __future__ import annotations

import asyncio
import time
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


class AsyncClient(BaseClient):
    """``async with AsyncClient(url, api_key=...) as client: df = await client.embed(...)``."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        retry: RetryPolicy | int | None = None,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(url, api_key=api_key, timeout=timeout, retry=retry, headers=headers)
        self._http = httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=self.timeout,
                                       transport=transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

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
        timeout: float = 600.0,
    ) -> Any:
        """See ``Client.embed``."""
        job = await self.submit(images, locations, metadata, model, detect_nuclei=detect_nuclei,
                                normalization=normalization, channel_order=channel_order,
                                wait=min(timeout, LONG_POLL_S))
        job = await self.wait(job.id, timeout=timeout) if not job.status.finished else self.check_finished(job)
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
        timeout: float = 600.0,
    ) -> Any:
        """See ``Client.embed_many``; sites run concurrently, rows come back in site order."""
        resolved = [s if isinstance(s, Site) else Site(**s) for s in sites]
        gate = asyncio.Semaphore(max_in_flight)
        with progress_bar(len(resolved), progress) as bar:

            async def one(site: Site) -> Any:
                async with gate:
                    table = await self.embed(site.images, site.locations, site.metadata, model,
                                             detect_nuclei=detect_nuclei, normalization=normalization,
                                             channel_order=site.channel_order, timeout=timeout)
                bar.update(1)
                return table

            tables = await asyncio.gather(*(one(site) for site in resolved))
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
        """See ``Client.submit``."""
        upload = self.build_upload(images, locations, metadata, model, detect_nuclei=detect_nuclei,
                                   normalization=normalization, channel_order=channel_order)
        return self.parse_job(await self._send("POST", "/v1/jobs", params={"wait": wait}, upload=upload))

    async def job(self, job_id: str, *, wait: float = 0.0) -> JobPublic:
        return self.parse_job(await self._send("GET", f"/v1/jobs/{job_id}", params={"wait": wait}))

    async def wait(self, job_id: str, *, timeout: float = 600.0) -> JobPublic:
        """See ``Client.wait``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            job = await self.job(job_id, wait=max(0.0, min(remaining, LONG_POLL_S)))
            if job.status.finished:
                return self.check_finished(job)
            if time.monotonic() >= deadline:
                raise JobTimeout(f"job {job_id} is still {job.status.value} after {timeout:g} s", job_id=job_id)

    async def result(self, job_id: str, *, format: ResultFormat = "table") -> Any:
        params, accept = self.result_request(format)
        response = await self._send("GET", f"/v1/jobs/{job_id}/result", params=params, headers={"Accept": accept})
        return self.parse_result(response, format)

    async def delete(self, job_id: str) -> None:
        await self._send("DELETE", f"/v1/jobs/{job_id}")

    # -- profiles: tables, sphering, libraries, evaluation --------------------------------------

    async def upload_table(
        self, table: TableInput, *, features: FeaturesInput = None, name: str | None = None
    ) -> TablePublic:
        """See ``Client.upload_table``."""
        upload = table_upload(table, features=features, name=name)
        return TablePublic.model_validate_json((await self._send("POST", "/v1/tables", upload=upload)).content)

    async def tables(self) -> list[TablePublic]:
        return TableList.model_validate_json((await self._send("GET", "/v1/tables")).content).data

    async def get_table(self, table_id: Any) -> TablePublic:
        response = await self._send("GET", f"/v1/tables/{ref(table_id, 'table')}")
        return TablePublic.model_validate_json(response.content)

    async def download_table(self, table_id: Any) -> Any:
        """See ``Client.download_table``."""
        response = await self._send("GET", f"/v1/tables/{ref(table_id, 'table')}/data", params={"format": "parquet"})
        return parquet_table(response.content)

    async def delete_table(self, table_id: Any) -> None:
        await self._send("DELETE", f"/v1/tables/{ref(table_id, 'table')}")

    async def fit_sphering(
        self, table: TableInput, *, controls: str, lam: float, method: str = "zca", features: FeaturesInput = None
    ) -> TransformPublic:
        """See ``Client.fit_sphering``."""
        body = {"table_id": await self._table_id(table), "controls": controls, "lambda": lam, "method": method}
        body = with_features(body, features)
        return TransformPublic.model_validate_json((await self._send("POST", "/v1/transforms", json=body)).content)

    async def transforms(self) -> list[TransformPublic]:
        return TransformList.model_validate_json((await self._send("GET", "/v1/transforms")).content).data

    async def get_transform(self, transform_id: Any) -> TransformPublic:
        response = await self._send("GET", f"/v1/transforms/{ref(transform_id, 'transform')}")
        return TransformPublic.model_validate_json(response.content)

    async def delete_transform(self, transform_id: Any) -> None:
        await self._send("DELETE", f"/v1/transforms/{ref(transform_id, 'transform')}")

    async def sphere_table(self, transform_id: Any, table: TableInput, *, features: FeaturesInput = None) -> TablePublic:
        """See ``Client.sphere_table``."""
        body = with_features({"table_id": await self._table_id(table)}, features)
        response = await self._send("POST", f"/v1/transforms/{ref(transform_id, 'transform')}/apply", json=body)
        return TablePublic.model_validate_json(response.content)

    async def apply_sphering(self, transform_id: Any, table: TableInput, *, features: FeaturesInput = None) -> Any:
        """See ``Client.apply_sphering``."""
        return await self.download_table((await self.sphere_table(transform_id, table, features=features)).id)

    async def create_library(
        self, table: TableInput, *, id_col: str, annotations: Sequence[str] = (), features: FeaturesInput = None
    ) -> LibraryPublic:
        """See ``Client.create_library``."""
        body = {"table_id": await self._table_id(table), "id_column": id_col, "annotations": list(annotations)}
        body = with_features(body, features)
        return LibraryPublic.model_validate_json((await self._send("POST", "/v1/libraries", json=body)).content)

    async def libraries(self) -> list[LibraryPublic]:
        return LibraryList.model_validate_json((await self._send("GET", "/v1/libraries")).content).data

    async def get_library(self, library_id: Any) -> LibraryPublic:
        response = await self._send("GET", f"/v1/libraries/{ref(library_id, 'library')}")
        return LibraryPublic.model_validate_json(response.content)

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
    ) -> Any:
        """See ``Client.match``."""
        profiles = inline_profiles(queries)
        table_id = None if profiles is not None else await self._table_id(queries)
        body = match_body(table_id=table_id, profiles=profiles, id_col=id_col, top_k=top_k, leave_one_out=leave_one_out,
                          features=features)
        response = await self._send("POST", f"/v1/libraries/{ref(library_id, 'library')}/match", json=body)
        return matches_table(MatchResult.model_validate_json(response.content))

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
        """See ``Client.evaluate``."""
        body = {"table_id": await self._table_id(table), "id_column": id_col, "annotation": annotation,
                "separator": sep, "convention": convention}
        body = with_features(body, features)
        return Evaluation.model_validate_json((await self._send("POST", "/v1/evaluate", json=body)).content).model_dump()

    async def _table_id(self, table: TableInput) -> str:
        stored = stored_table_id(table)
        return stored if stored is not None else (await self.upload_table(table)).id

    async def models(self) -> list[ModelPublic]:
        return ModelList.model_validate_json((await self._send("GET", "/v1/models")).content).data

    async def model(self, name: str) -> ModelPublic:
        return ModelPublic.model_validate_json((await self._send("GET", f"/v1/models/{name}")).content)

    async def health(self) -> Health:
        return Health.model_validate_json((await self._send("GET", "/healthz")).content)

    async def ready(self) -> Readiness:
        response = await self._http.get("/readyz")
        if response.status_code not in (200, 503):
            self.raise_for_status(response)
        return Readiness.model_validate_json(response.content)

    async def _send(
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
            await asyncio.sleep(self.retry.delay(attempt, response.headers.get("Retry-After") if response else None))

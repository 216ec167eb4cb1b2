"""``Client``: the blocking SDK. Only ``_send`` and sleeping differ from ``AsyncClient``."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import httpx

from cpcnn.client._base import (
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
from cpcnn.schemas import Health, JobPublic, ModelList, ModelPublic, Readiness

#: Longest single server-side wait per request (the server caps it too).
_LONG_POLL_S = 30.0


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
                          normalization=normalization, channel_order=channel_order, wait=min(timeout, _LONG_POLL_S))
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
            job = self.job(job_id, wait=max(0.0, min(remaining, _LONG_POLL_S)))
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
        headers: Mapping[str, str] | None = None, upload: Upload | None = None,
    ) -> httpx.Response:
        attempt = 0
        while True:
            attempt += 1
            response: httpx.Response | None = None
            error: httpx.TransportError | None = None
            try:
                request = self._http.build_request(
                    method, path, params=params, headers=headers,
                    files=upload.files if upload else None, data=upload.data if upload else None,
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

"""``detect_nuclei=true`` obeys ``max_cells``: a job whose detection finds more cells than the limit
fails with a clear problem before any per-cell array (crops, features) is allocated."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from _servers import wait_ready
from _tiny_model import synthetic_site, tiff_bytes
from cpcnn.service.config import Limits

from cpcnn import batching
from cpcnn._types import CHANNELS


def _files(n_cells: int) -> dict[str, Any]:
    planes, _ = synthetic_site(size=256, n_cells=n_cells, seed=3)
    return {c: (f"{c}.tif", tiff_bytes(planes[c]), "image/tiff") for c in CHANNELS}


def test_detected_nuclei_over_max_cells_fail_the_job(
    serve: Callable[..., httpx.Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    crop_calls: list[Any] = []
    real_buffer = batching.crop_buffer
    monkeypatch.setattr(batching, "crop_buffer", lambda *a, **k: crop_calls.append(a) or real_buffer(*a, **k))
    client = serve(limits=Limits(max_cells=4))
    wait_ready(client)
    job = client.post("/v1/jobs", params={"wait": 60}, files=_files(6), data={"detect_nuclei": "true"}).json()
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "input_error" and job["error"]["status"] == 422
    assert "found 6 nuclei" in job["error"]["detail"] and "limit of 4" in job["error"]["detail"]
    assert crop_calls == []
    assert job["n_cells"] is None

    within = client.post("/v1/jobs", params={"wait": 60}, files=_files(3), data={"detect_nuclei": "true"}).json()
    assert within["status"] == "succeeded" and within["n_cells"] == 3, within

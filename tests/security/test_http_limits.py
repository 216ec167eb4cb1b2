"""Large results are served in bounded memory: JSON is streamed, Parquet is written a row group at a time.

A 50,000-cell JSON result used to cost about 3 GB per request (every float a Python object, twice).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from _http_fixtures import RSS_BUDGET_BYTES, Served, served_fixture, stored_result  # noqa: F401
from cpcnn.service.job_store import JobState, JobStore

from cpcnn.io.cells import cells_table
from cpcnn.locations import Locations
from cpcnn.schemas import CellsResult, JobStatus


def _document(job_folder: Path, job_id: str, data_dir: Path) -> tuple[bytes, np.ndarray, Locations]:
    from cpcnn.service.app.results import StoredResult, json_chunks

    jobs = JobStore(data_dir)
    features, cells = jobs.load_result(job_id)
    body = b"".join(json_chunks(jobs.public(job_id), "efficientnet", *StoredResult(job_folder).open()))
    return body, features, cells


@pytest.mark.parametrize("n_cells", [0, 1, 256, 2 * 256 + 7])  # 256 rows per JSON block
def test_streamed_json_equals_the_pydantic_document(tmp_path: Path, n_cells: int) -> None:
    job_id = stored_result(tmp_path, n_cells=n_cells, feature_size=5)
    jobs = JobStore(tmp_path)
    features, cells = jobs.load_result(job_id)
    if n_cells:
        features[0, 1], features[-1, 0] = np.nan, np.inf  # written as null, as pydantic does
        jobs.write_result(job_id, features, cells.centers)
    body, features, cells = _document(jobs.folder(job_id), job_id, tmp_path)
    job = jobs.public(job_id)
    expected = CellsResult(job_id=job_id, model=job.model, feature_prefix="efficientnet", metadata=job.metadata,
                           n_cells=n_cells, feature_size=5, locations=[(float(x), float(y)) for x, y in cells.centers],
                           object_numbers=cells.object_numbers.tolist(), features=features.tolist())
    assert json.loads(body) == json.loads(expected.model_dump_json())
    assert list(json.loads(body)) == list(CellsResult.model_fields)
    assert json.loads(body)["n_cells"] == n_cells == len(json.loads(body)["features"])
    finite = np.isfinite(features)
    got = np.array([[math.nan if v is None else v for v in row] for row in json.loads(body)["features"]],
                   dtype=np.float64).reshape(features.shape)
    np.testing.assert_array_equal(got[finite].astype(np.float32), features[finite])  # exact round trip


def test_parquet_is_written_once_in_row_groups(tmp_path: Path) -> None:
    from cpcnn.service.app.results import StoredResult, parquet_file

    job_id = stored_result(tmp_path, n_cells=9000, feature_size=3)
    jobs = JobStore(tmp_path)
    job = jobs.public(job_id)
    path = parquet_file(StoredResult(jobs.folder(job_id)), job, "efficientnet")
    features, cells = jobs.load_result(job_id)
    expected = cells_table(features, cells, metadata=job.metadata, model_name=job.model)
    table = pq.read_table(path)
    assert table.equals(expected)
    assert pq.ParquetFile(path).metadata.num_row_groups == 3
    mtime = path.stat().st_mtime_ns
    assert parquet_file(StoredResult(jobs.folder(job_id)), job, "efficientnet") == path
    assert path.stat().st_mtime_ns == mtime


def test_streamed_results_carry_uploaded_object_numbers(tmp_path: Path) -> None:
    """Uploaded ObjectNumbers (``objects.npy``) reach every row of the streamed JSON and of the Parquet file,
    across row blocks; a result without them is numbered 1..N."""
    from cpcnn.service.app.results import StoredResult, json_chunks, parquet_file

    job_id = stored_result(tmp_path, n_cells=2 * 4096 + 5, feature_size=3)  # three Parquet row groups
    jobs = JobStore(tmp_path)
    folder = jobs.folder(job_id)
    assert b'"object_numbers":[1,2,3,' in b"".join(json_chunks(jobs.public(job_id), "efficientnet",
                                                               *StoredResult(folder).open()))
    numbers = np.arange(2 * 4096 + 5, dtype=np.int64)[::-1] * 7 + 3
    np.save(folder / "objects.npy", numbers, allow_pickle=False)
    document = json.loads(b"".join(json_chunks(jobs.public(job_id), "efficientnet", *StoredResult(folder).open())))
    assert document["object_numbers"] == numbers.tolist()
    assert list(document) == list(CellsResult.model_fields)
    table = pq.read_table(parquet_file(StoredResult(folder), jobs.public(job_id), "efficientnet"))
    np.testing.assert_array_equal(table.column("Metadata_ObjectNumber").to_numpy(), numbers)
    features, cells = jobs.load_result(job_id)
    np.testing.assert_array_equal(cells.object_numbers, numbers)
    np.testing.assert_array_equal(table.column("Metadata_Nuclei_Location_Center_Y").to_numpy(), cells.centers[:, 1])


def test_result_formats_over_http(served: Served) -> None:
    job_id = stored_result(served.data_dir, n_cells=700, feature_size=16, seed=3)
    features, cells = JobStore(served.data_dir).load_result(job_id)
    with served.client() as client:
        as_json = client.get(f"/v1/jobs/{job_id}/result")
        assert as_json.status_code == 200 and as_json.headers["content-type"] == "application/json"
        np.testing.assert_array_equal(np.array(as_json.json()["features"], np.float32), features)
        as_parquet = client.get(f"/v1/jobs/{job_id}/result", params={"format": "parquet"})
        assert as_parquet.status_code == 200 and "attachment" in as_parquet.headers["content-disposition"]
        table = pq.read_table(io.BytesIO(as_parquet.content))
        np.testing.assert_array_equal(table.column("efficientnet_15").to_numpy(), features[:, 15])
        np.testing.assert_array_equal(table.column("Metadata_Nuclei_Location_Center_X").to_numpy(), cells.centers[:, 0])
        np.testing.assert_array_equal(table.column("Metadata_ObjectNumber").to_numpy(), cells.object_numbers)
        assert as_json.json()["object_numbers"] == cells.object_numbers.tolist()
        # a result whose files are gone is a 404, not a 500 or a cut-off stream
        for name in ("features.npy", "cells.npy", "cells.parquet"):
            (served.data_dir / "jobs" / job_id / name).unlink()
        JobStore(served.data_dir).write_state(job_id, JobState(status=JobStatus.SUCCEEDED, n_cells=700))
        for fmt in ("json", "parquet"):
            missing = client.get(f"/v1/jobs/{job_id}/result", params={"format": fmt})
            assert missing.status_code == 404, (fmt, missing.status_code, missing.text[:200])


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["json", "parquet"])
def test_a_50000_cell_result_is_served_in_bounded_memory(served: Served, fmt: str) -> None:
    job_id = stored_result(served.data_dir, n_cells=50_000, feature_size=672, seed=1)
    idle = served.reset_peak()
    size = 0
    with served.client() as client, client.stream("GET", f"/v1/jobs/{job_id}/result", params={"format": fmt}) as response:
        assert response.status_code == 200
        tail = b""
        for chunk in response.iter_bytes():
            size += len(chunk)
            tail = (tail + chunk)[-64:]
    grown = served.peak() - idle
    assert grown < RSS_BUDGET_BYTES, f"peak memory grew by {grown / 2**20:.0f} MB for a {size / 2**20:.0f} MB {fmt}"
    assert size > 50_000 * 672 * 4 * (1.0 if fmt == "parquet" else 2.0)
    if fmt == "json":
        assert tail.endswith(b"]]}")

"""Embedded mode end to end: submit, wait, status, result in three encodings, dedup, delete."""

from __future__ import annotations

import io
from typing import Any

import httpx
import numpy as np
import pytest
from _tiny_model import expected_features, upload

from cpcnn._types import CHANNELS
from cpcnn.crops import crop_cells
from cpcnn.io.images import stack_planes


def _reference(site: dict[str, Any]) -> np.ndarray:
    image = stack_planes([site["planes"][c] for c in CHANNELS], CHANNELS)
    return expected_features(crop_cells(image, site["centers"]))


def test_submit_wait_and_fetch_json(api: httpx.Client, site: dict[str, Any]) -> None:
    response = api.post("/v1/jobs", params={"wait": 20}, files=upload(site),
                        data={"plate": "P1", "well": "A01", "site": "1"})
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] == "succeeded"
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["n_cells"] == 6 and job["feature_size"] == 672 and job["n_locations"] == 6
    assert job["metadata"] == {"Metadata_Plate": "P1", "Metadata_Well": "A01", "Metadata_Site": "1"}
    result = api.get(job["links"]["result"]).json()
    features = np.asarray(result["features"], np.float32)
    np.testing.assert_allclose(features, _reference(site), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(np.asarray(result["locations"]), site["centers"])


def test_submit_without_wait_is_202_then_polls(api: httpx.Client, site: dict[str, Any]) -> None:
    response = api.post("/v1/jobs", files=upload(site), data={"plate": "no-wait"})
    assert response.status_code in (200, 202)
    job_id = response.json()["id"]
    for _ in range(400):
        job = api.get(f"/v1/jobs/{job_id}").json()
        if job["status"] == "succeeded":
            break
        np.testing.assert_equal(job["status"] in ("queued", "running"), True)
        import time

        time.sleep(0.02)
    assert job["status"] == "succeeded" and job["attempts"] == 1


def test_result_content_negotiation(api: httpx.Client, site: dict[str, Any]) -> None:
    import pyarrow.parquet as pq

    job = api.post("/v1/jobs", params={"wait": 20}, files=upload(site)).json()
    url = job["links"]["result"]
    as_npy = api.get(url, headers={"Accept": "application/x-npy"})
    assert as_npy.headers["content-type"] == "application/x-npy"
    features = np.load(io.BytesIO(as_npy.content))
    assert features.shape == (6, 672) and features.dtype == np.float32
    as_parquet = api.get(url, headers={"Accept": "application/vnd.apache.parquet"})
    assert as_parquet.headers["content-type"] == "application/vnd.apache.parquet"
    table = pq.read_table(io.BytesIO(as_parquet.content))
    assert table.column_names[:8] == ["Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_Model",
                                      "Metadata_ObjectNumber", "Metadata_Nuclei_Location_Center_X",
                                      "Metadata_Nuclei_Location_Center_Y", "efficientnet_0"]
    assert table.column_names[-1] == "efficientnet_671" and table.num_rows == 6
    assert table.column("Metadata_ObjectNumber").to_pylist() == [1, 2, 3, 4, 5, 6]  # positions: no ObjectNumber sent
    np.testing.assert_array_equal(np.asarray(table.column("efficientnet_5")), features[:, 5])
    assert api.get(url, params={"format": "npy"}).headers["content-type"] == "application/x-npy"
    assert api.get(url, headers={"Accept": "text/html;q=0.9, application/json;q=0.5"}).status_code == 200
    refused = api.get(url, headers={"Accept": "text/html"})
    assert refused.status_code == 406 and refused.json()["code"] == "not_acceptable"


def test_same_upload_same_job(api: httpx.Client, site: dict[str, Any]) -> None:
    first = api.post("/v1/jobs", params={"wait": 20}, files=upload(site), data={"plate": "dedup"}).json()
    again = api.post("/v1/jobs", files=upload(site), data={"plate": "dedup"}).json()
    assert again["id"] == first["id"] and again["attempts"] == 1
    other = api.post("/v1/jobs", files=upload(site), data={"plate": "other"}).json()
    assert other["id"] != first["id"]


def test_multichannel_stack_with_channel_order(api: httpx.Client, site: dict[str, Any]) -> None:
    import tifffile

    order = ["Mito", "AGP", "RNA", "ER", "DNA"]
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.stack([site["planes"][c] for c in order]))
    files = {"image": ("stack.tif", buffer.getvalue(), "image/tiff"),
             "locations": ("nuclei.csv", site["locations"], "text/csv")}
    job = api.post("/v1/jobs", params={"wait": 20}, files=files, data={"channel_order": ",".join(order)}).json()
    assert job["status"] == "succeeded", job
    features = np.load(io.BytesIO(api.get(job["links"]["result"], params={"format": "npy"}).content))
    np.testing.assert_allclose(features, _reference(site), rtol=1e-4, atol=1e-3)


def test_json_locations_as_text_field(api: httpx.Client, site: dict[str, Any]) -> None:
    import json

    pairs = json.dumps([[float(x), float(y)] for x, y in site["centers"]])
    job = api.post("/v1/jobs", params={"wait": 20}, files=site["files"], data={"locations": pairs}).json()
    assert job["status"] == "succeeded" and job["n_cells"] == 6


def test_zero_locations_give_zero_rows(api: httpx.Client, site: dict[str, Any]) -> None:
    empty = ("nuclei.csv", b"Nuclei_Location_Center_X,Nuclei_Location_Center_Y\n", "text/csv")
    job = api.post("/v1/jobs", params={"wait": 20}, files=upload(site, locations=empty)).json()
    assert job["status"] == "succeeded" and job["n_cells"] == 0
    assert api.get(job["links"]["result"]).json()["features"] == []


def test_detect_nuclei_without_locations(api: httpx.Client, site: dict[str, Any]) -> None:
    job = api.post("/v1/jobs", params={"wait": 30}, files=site["files"], data={"detect_nuclei": "true"}).json()
    assert job["status"] == "succeeded", job
    assert job["detect_nuclei"] is True and job["n_locations"] is None
    found = np.asarray(api.get(job["links"]["result"]).json()["locations"])
    assert found.shape == (6, 2)
    distances = np.linalg.norm(found[:, None, :] - site["centers"][None, :, :], axis=2).min(axis=1)
    assert distances.max() < 2.0


def test_delete_job(api: httpx.Client, site: dict[str, Any]) -> None:
    job = api.post("/v1/jobs", params={"wait": 20}, files=upload(site), data={"plate": "delete-me"}).json()
    assert api.delete(f"/v1/jobs/{job['id']}").status_code == 204
    gone = api.get(f"/v1/jobs/{job['id']}")
    assert gone.status_code == 404 and gone.headers["content-type"] == "application/problem+json"
    assert api.delete(f"/v1/jobs/{job['id']}").status_code == 404


@pytest.mark.parametrize("path", ["/v1/jobs/not-a-job", "/v1/jobs/" + "0" * 32, "/v1/jobs/" + "0" * 32 + "/result"])
def test_unknown_jobs_are_404(api: httpx.Client, path: str) -> None:
    response = api.get(path)
    assert response.status_code == 404 and response.json()["code"] == "not_found"


def test_models_endpoints(api: httpx.Client) -> None:
    listing = api.get("/v1/models").json()
    assert listing["count"] == 2 and {m["name"] for m in listing["data"]} == {"cnn1", "cnn1-copy"}
    info = api.get("/v1/models/cnn1").json()
    assert info["feature_size"] == 672 and info["channels"] == list(CHANNELS) and info["crop_size"] == 128
    assert info["normalization"] == "minmax" and len(info["onnx_sha256"]) == 64
    assert api.get("/v1/models/nope").status_code == 404
    assert api.get("/v1/models/..%2F..").status_code == 404


def test_other_model_per_request(api: httpx.Client, site: dict[str, Any]) -> None:
    job = api.post("/v1/jobs", params={"wait": 20}, files=upload(site), data={"model": "cnn1-copy"}).json()
    assert job["status"] == "succeeded" and job["model"] == "cnn1-copy"


def test_health_ready_metrics(api: httpx.Client, site: dict[str, Any]) -> None:
    assert api.get("/healthz").json()["status"] == "ok"
    ready = api.get("/readyz").json()
    assert ready["ready"] and ready["queue"] == "embedded" and ready["workers"][0]["models"] == ["cnn1"]
    api.post("/v1/jobs", params={"wait": 20}, files=upload(site), data={"plate": "metrics"})
    text = api.get("/metrics").text
    for name in ("cpcnn_http_requests_total", "cpcnn_queue_depth", "cpcnn_queue_wait_seconds_bucket",
                 "cpcnn_inference_seconds_bucket", "cpcnn_cells_embedded_total", "cpcnn_batch_size_bucket",
                 "cpcnn_workers"):
        assert name in text, name
    assert 'route="/v1/jobs",status="200"' in text

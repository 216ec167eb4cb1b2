"""The endpoints the web console reads: workers, recent jobs, throughput, crop previews, profile maps."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import httpx
import numpy as np
import pytest
from _profiles_data import synthetic_profiles
from _tiny_model import upload

from cpcnn._types import CHANNELS
from cpcnn.batching import SiteCrops
from cpcnn.preview import encode_png
from cpcnn.profiles.projection import pca_2d, spread_rows


def _png_pixels(url: str) -> np.ndarray:
    from PIL import Image

    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def test_workers_and_recent_jobs_and_throughput(api: httpx.Client, site: dict[str, Any]) -> None:
    workers = api.get("/v1/workers").json()
    assert workers["queue"] == "embedded" and workers["queue_depth"] == 0 and workers["count"] == 1
    worker = workers["data"][0]
    assert worker["provider"] == "CPUExecutionProvider" and "cnn1" in worker["models"] and worker["batch_size"] > 0

    job = api.post("/v1/jobs?wait=30", files=upload(site)).json()
    assert job["status"] == "succeeded"
    listing = api.get("/v1/jobs", params={"limit": 5}).json()
    assert listing["total"] == 1 and [j["id"] for j in listing["data"]] == [job["id"]]

    throughput = api.get("/v1/throughput", params={"minutes": 3}).json()
    assert len(throughput["buckets"]) == 3 and throughput["bucket_s"] == 60
    assert sum(b["cells"] for b in throughput["buckets"]) == job["n_cells"] == len(site["centers"])
    assert throughput["buckets"][-1]["cells"] == job["n_cells"] and throughput["cells_per_s"] > 0
    assert api.get("/v1/jobs", params={"limit": 0}).status_code == 422
    assert api.get("/v1/throughput", params={"minutes": 61}).status_code == 422


def test_crop_preview_is_what_the_network_sees(api: httpx.Client, site: dict[str, Any]) -> None:
    files = site["files"] | {"locations": ("cells.csv", site["locations"], "text/csv")}
    answer = api.post("/v1/crops/preview", files=files, data={"cells": "2,0"})
    assert answer.status_code == 200, answer.text
    preview = answer.json()
    assert preview["width"] == preview["height"] == 256 and preview["crop_size"] == 128
    np.testing.assert_allclose(preview["centers"], site["centers"])
    assert preview["object_numbers"] == list(range(1, len(site["centers"]) + 1))
    composite = _png_pixels(preview["composite"])
    assert composite.shape == (256, 256, 3) and composite.max() > 0
    assert [c["index"] for c in preview["crops"]] == [2, 0]

    image = np.stack([site["planes"][c] for c in CHANNELS], axis=-1).astype(np.float32)
    expected = SiteCrops.check(image, site["centers"][[2, 0]], normalization="minmax").crop(slice(0, 2))
    for crop, want in zip(preview["crops"], expected, strict=True):
        for index, channel in enumerate(CHANNELS):
            shown = _png_pixels(crop["channels"][channel])
            assert shown.shape == (128, 128)
            np.testing.assert_array_less(np.abs(shown / 255.0 - want[:, :, index]), 0.5 / 255 + 1e-6)


def test_crop_preview_detects_nuclei_and_refuses_bad_requests(api: httpx.Client, site: dict[str, Any]) -> None:
    detected = api.post("/v1/crops/preview", files=site["files"], data={"detect_nuclei": "true", "composite": "false"})
    assert detected.status_code == 200, detected.text
    assert detected.json()["composite"] is None and len(detected.json()["centers"]) >= 1

    locations = json.dumps({"x": [100.0], "y": [120.0]})
    too_far = api.post("/v1/crops/preview", files=site["files"], data={"locations": locations, "cells": "1"})
    assert too_far.status_code == 422 and "past the 1 nuclei" in too_far.json()["detail"]
    too_many = api.post("/v1/crops/preview", files=site["files"],
                        data={"locations": locations, "cells": ",".join(map(str, range(17)))})
    assert too_many.status_code == 422 and "at most 16" in too_many.json()["detail"]
    for bad in ("a", "-1", "9" * 40):
        refused = api.post("/v1/crops/preview", files=site["files"], data={"locations": locations, "cells": bad})
        assert refused.status_code == 422 and "comma-separated row numbers" in refused.json()["detail"]
        assert len(refused.json()["detail"]) < 120
    no_cells = api.post("/v1/crops/preview", files=site["files"])
    assert no_cells.status_code == 422 and "no locations" in no_cells.json()["detail"]
    assert api.post("/v1/crops/preview", json={}).status_code == 415


def test_profile_map_pca_matches_numpy_and_carries_metadata(api: httpx.Client) -> None:
    table = synthetic_profiles()
    table.loc[3, "f0"] = np.nan
    body = table.to_csv(index=False).encode()
    stored = api.post("/v1/tables", files={"file": ("<b>t</b>.csv", body, "text/csv")}).json()
    answer = api.get(f"/v1/tables/{stored['id']}/map", params={"method": "pca"})
    assert answer.status_code == 200, answer.text
    shown = answer.json()
    assert shown["n_rows"] == len(table) and shown["n_dropped_non_finite"] == 1 and shown["n_shown"] == len(table) - 1
    kept = table.drop(index=3)
    coords, ratio = pca_2d(kept[[c for c in table.columns if c.startswith("f")]].to_numpy(np.float32))
    np.testing.assert_allclose(np.c_[shown["x"], shown["y"]], coords, rtol=1e-6, atol=1e-6)
    assert shown["explained_variance"] == pytest.approx(ratio)
    assert shown["metadata"]["Metadata_moa"][:2] == [None, None] and shown["rows"][3] == 4
    assert shown["methods"][0] == "pca"

    sampled = api.get(f"/v1/tables/{stored['id']}/map", params={"max_rows": 10}).json()
    assert sampled["n_shown"] <= 10 and sampled["rows"][0] == 0
    assert api.get(f"/v1/tables/{stored['id']}/map", params={"max_rows": 1}).status_code == 422
    assert api.get(f"/v1/tables/{'0' * 32}/map").status_code == 404
    empty = api.post("/v1/tables", files={"file": ("e.csv", b"Metadata_a,f1\nx,\ny,\n", "text/csv")}).json()
    refused = api.get(f"/v1/tables/{empty['id']}/map")
    assert refused.status_code == 422 and "every feature finite" in refused.json()["detail"]
    if "umap" not in shown["methods"]:
        refused = api.get(f"/v1/tables/{stored['id']}/map", params={"method": "umap"})
        assert refused.status_code == 422 and "umap-learn" in refused.json()["detail"]


def test_projection_and_png_units() -> None:
    rng = np.random.default_rng(0)
    points = rng.normal(size=(50, 3)) * [5.0, 1.0, 0.1]
    coords, ratio = pca_2d(points)
    assert ratio[0] > ratio[1] > 0 and abs(np.corrcoef(coords[:, 0], points[:, 0])[0, 1]) > 0.99
    assert list(spread_rows(5, 10)) == [0, 1, 2, 3, 4] and list(spread_rows(101, 3)) == [0, 50, 100]
    from PIL import Image

    pixels = (np.arange(12 * 7 * 3) % 256).astype(np.uint8).reshape(12, 7, 3)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(encode_png(pixels)))), pixels)
    gray = pixels[:, :, 0].copy()
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(encode_png(gray)))), gray)


def test_console_files_are_public_and_locked_down(serve: Any) -> None:
    client = serve(api_key="s3cret")
    assert client.get("/v1/workers").status_code == 401
    assert client.get("/v1/crops/preview").status_code == 401
    root = client.get("/", follow_redirects=False)
    assert root.status_code == 307 and root.headers["location"] == "/ui"
    page = client.get("/ui")
    assert page.status_code == 200 and 'data-testid="upload-form"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/ui/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/ui/..%2Fpyproject.toml").status_code == 404
    assert client.get("/ui/main.py").status_code == 404
    assert client.get("/ui/example").json()["channels"]["DNA"].endswith("ch5sk1fk1fl1.tiff")
    assert client.get("/ui/example/..%2Fpyproject.toml").status_code == 404
    assert "/ui" not in json.dumps(client.get("/openapi.json", headers={"X-API-Key": "s3cret"}).json()["paths"])
    assert client.get("/v1/workers", headers={"X-API-Key": "s3cret"}).status_code == 200

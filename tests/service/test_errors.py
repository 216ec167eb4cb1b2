"""Bad input is a 4xx problem naming the problem, never a 500; limits, API key, backpressure."""

from __future__ import annotations

import io
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tifffile
from _servers import live_server, wait_ready
from _tiny_model import tiff_bytes, upload
from cpcnn.service.app.main import create_app
from cpcnn.service.config import ApiSettings, Limits, QueueSettings

from cpcnn.schemas import JobStatus

KEY = "k" * 24


def bomb_tiff(width: int = 60_000, height: int = 60_000) -> bytes:
    """A 100-byte TIFF whose header claims width x height pixels."""
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.zeros((8, 8), np.uint16), compression="zlib")
    data = bytearray(buffer.getvalue())
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        tags = tif.pages[0].tags
        for name, value in (("ImageWidth", width), ("ImageLength", height)):
            data[tags[name].valueoffset : tags[name].valueoffset + 4] = struct.pack("<I", value)
    return bytes(data)


def _problem(response: httpx.Response, status: int, code: str, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body["code"] == code
    for word in words:
        assert word in body["detail"], body["detail"]
    return body


def test_missing_channel(api: httpx.Client, site: dict[str, Any]) -> None:
    files = upload(site)
    del files["Mito"]
    _problem(api.post("/v1/jobs", files=files), 422, "input_error", "missing channel", "Mito")


def test_not_an_image_is_415(api: httpx.Client, site: dict[str, Any]) -> None:
    files = upload(site, ER=("er.tif", b"hello, not a tiff", "image/tiff"))
    _problem(api.post("/v1/jobs", files=files), 415, "unsupported_media", "ER")


def test_truncated_tiff_is_415(api: httpx.Client, site: dict[str, Any]) -> None:
    truncated = tiff_bytes(site["planes"]["RNA"], compression="zlib")[:400]
    _problem(api.post("/v1/jobs", files=upload(site, RNA=("r.tif", truncated, "image/tiff"))), 415,
             "unsupported_media", "RNA")


def test_size_mismatch(api: httpx.Client, site: dict[str, Any]) -> None:
    small = tiff_bytes(np.zeros((100, 120), np.uint16))
    _problem(api.post("/v1/jobs", files=upload(site, AGP=("a.tif", small, "image/tiff"))), 422, "input_error",
             "differ in size")


def test_no_locations_and_no_detection(api: httpx.Client, site: dict[str, Any]) -> None:
    _problem(api.post("/v1/jobs", files=site["files"]), 422, "input_error", "detect_nuclei")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (b"a,b\n1,2\n", ("Nuclei_Location_Center_X",)),
        (b"Nuclei_Location_Center_X,Nuclei_Location_Center_Y\nnan,3\n", ("NaN",)),
        (b"Nuclei_Location_Center_X,Nuclei_Location_Center_Y\n10,10\n5000,5000\n", ("outside", "row 1")),
        (b"[[1, 2], {\"x\": 1}]", ("JSON",)),
        (b"\xff\xfe\x00garbage", ()),
    ],
)
def test_bad_locations(api: httpx.Client, site: dict[str, Any], text: bytes, words: tuple[str, ...]) -> None:
    files = upload(site, locations=("n.csv", text, "text/csv"))
    _problem(api.post("/v1/jobs", files=files), 422, "input_error", *words)


def test_unknown_model_and_part(api: httpx.Client, site: dict[str, Any]) -> None:
    _problem(api.post("/v1/jobs", files=upload(site), data={"model": "nope"}), 422, "input_error", "nope")
    _problem(api.post("/v1/jobs", files=upload(site), data={"model": "../x"}), 422, "input_error")
    extra = upload(site, DAPI=("d.tif", b"x", "image/tiff"))
    _problem(api.post("/v1/jobs", files=extra), 422, "input_error", "DAPI")


def test_stack_and_channels_together(api: httpx.Client, site: dict[str, Any]) -> None:
    files = upload(site, image=("s.tif", tiff_bytes(site["planes"]["DNA"]), "image/tiff"))
    _problem(api.post("/v1/jobs", files=files), 422, "input_error", "not both")


def test_bad_parameters_are_422(api: httpx.Client, site: dict[str, Any]) -> None:
    body = _problem(api.post("/v1/jobs", params={"wait": -1}, files=upload(site)), 422, "input_error", "wait")
    assert body["errors"][0]["loc"] == ["query", "wait"]
    _problem(api.post("/v1/jobs", files=upload(site), data={"normalization": "zscore"}), 422, "input_error")


def test_not_multipart(api: httpx.Client) -> None:
    _problem(api.post("/v1/jobs", json={"DNA": "x"}), 415, "unsupported_media", "multipart/form-data")


def test_malformed_multipart_is_400(api: httpx.Client) -> None:
    response = api.post("/v1/jobs", content=b"--xyz\r\nbroken", headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert response.status_code in (400, 422), response.text
    assert response.headers["content-type"] == "application/problem+json"


def test_decompression_bomb_is_413(api: httpx.Client, site: dict[str, Any]) -> None:
    files = upload(site, DNA=("bomb.tif", bomb_tiff(), "image/tiff"))
    _problem(api.post("/v1/jobs", files=files), 413, "payload_too_large", "DNA", "over the limit")


@pytest.fixture
def limited(make_settings: Callable[..., ApiSettings]) -> Iterator[httpx.Client]:
    limits = Limits(max_upload_bytes=1_500_000, max_part_bytes=150_000, max_pixels=200 * 200, max_cells=4)
    with live_server(create_app(make_settings(limits=limits))) as url, httpx.Client(base_url=url) as client:
        yield client


def test_upload_limits(limited: httpx.Client, site: dict[str, Any]) -> None:
    big = tiff_bytes(np.random.default_rng(0).integers(0, 65535, (300, 300), dtype=np.uint16))
    _problem(limited.post("/v1/jobs", files=upload(site, DNA=("d.tif", big, "image/tiff"))), 413,
             "payload_too_large", "part DNA")
    _problem(limited.post("/v1/jobs", content=b"x" * 1_600_000, headers={"Content-Type": "multipart/form-data; boundary=b"}),
             413, "payload_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit trips while streaming
        yield b"--b\r\nContent-Disposition: form-data; name=\"DNA\"; filename=\"d.tif\"\r\n\r\n"
        for _ in range(200):
            yield b"x" * 10_000

    streamed = limited.post("/v1/jobs", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"})
    _problem(streamed, 413, "payload_too_large")
    _problem(limited.post("/v1/jobs", files=upload(site)), 413, "payload_too_large", "pixels")


def test_cell_limit(limited: httpx.Client) -> None:
    from _tiny_model import locations_csv, synthetic_site

    planes, centers = synthetic_site(size=128, n_cells=6)
    files = {name: (f"{name}.tif", tiff_bytes(p), "image/tiff") for name, p in planes.items()}
    files["locations"] = ("n.csv", locations_csv(centers), "text/csv")
    _problem(limited.post("/v1/jobs", files=files), 413, "payload_too_large", "locations", "limit of 4 cells")


def test_api_key(make_settings: Callable[..., ApiSettings], site: dict[str, Any]) -> None:
    with live_server(create_app(make_settings(api_key=KEY))) as url, httpx.Client(base_url=url) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code in (200, 503)
        _problem(client.get("/v1/models"), 401, "unauthorized", "X-API-Key")
        _problem(client.get("/v1/models", headers={"X-API-Key": "wrong"}), 401, "unauthorized")
        _problem(client.post("/v1/jobs", files=upload(site)), 401, "unauthorized")
        _problem(client.get("/metrics"), 401, "unauthorized")
        assert client.get("/v1/models", headers={"X-API-Key": KEY}).status_code == 200
        assert client.get("/metrics", headers={"X-API-Key": KEY}).status_code == 200


@pytest.fixture
def stalled(make_settings: Callable[..., ApiSettings], monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[httpx.Client, threading.Event]]:
    """An API whose worker blocks inside the first job until released."""
    import cpcnn.service.in_process_queue as local_queue

    release = threading.Event()
    real_run_job = local_queue.run_job

    def slow_run_job(job_id: str, context: Any) -> dict[str, Any]:
        context.jobs.write_state(job_id, context.jobs.state(job_id).model_copy(update={"status": JobStatus.RUNNING}))
        release.wait(30)
        return real_run_job(job_id, context)

    monkeypatch.setattr(local_queue, "run_job", slow_run_job)
    settings = make_settings(queue=QueueSettings(max_depth=1, retry_after_s=7))
    settings.worker.slots = 1
    with live_server(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
        wait_ready(client)
        yield client, release
        release.set()


def test_conflicts_and_backpressure(stalled: tuple[httpx.Client, threading.Event], site: dict[str, Any]) -> None:
    client, release = stalled
    running = client.post("/v1/jobs", files=upload(site), data={"plate": "a"}).json()
    for _ in range(200):
        if client.get(f"/v1/jobs/{running['id']}").json()["status"] == "running":
            break
    _problem(client.get(f"/v1/jobs/{running['id']}/result"), 409, "conflict", "running")
    _problem(client.delete(f"/v1/jobs/{running['id']}"), 409, "conflict", "running")
    queued = client.post("/v1/jobs", files=upload(site), data={"plate": "b"})
    assert queued.status_code == 202 and queued.json()["status"] == "queued"
    full = client.post("/v1/jobs", files=upload(site), data={"plate": "c"})
    _problem(full, 503, "unavailable", "retry later")
    assert full.headers["Retry-After"] == "7"
    assert client.post("/v1/jobs", files=upload(site), data={"plate": "b"}).json()["id"] == queued.json()["id"]
    assert client.delete(f"/v1/jobs/{queued.json()['id']}").status_code == 204
    release.set()
    done = client.post("/v1/jobs", params={"wait": 20}, files=upload(site), data={"plate": "a"}).json()
    assert done["status"] == "succeeded"

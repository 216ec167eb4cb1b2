"""A plate request names files on the server: nothing outside the allowed roots may be read, whether by
``..``, an absolute path, or a symlink inside a root that points out of it; relative paths in an
uploaded CSV cannot be anchored anywhere, so they are refused too."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import httpx
import pandas as pd
import pytest
from _plate_files import PlateFiles, write_plate
from _plate_jobs import submit
from _servers import wait_until
from cpcnn.service.config import PlateSettings
from cpcnn.service.plate_paths import AllowedRoots

from cpcnn.errors import InputError


@pytest.fixture
def volumes(tmp_path: Path) -> tuple[PlateFiles, Path]:
    """The lab's allowed volume, and a secret folder beside it holding a plate of its own."""
    lab = write_plate(tmp_path / "lab")
    secret = tmp_path / "secret"
    write_plate(secret)
    return lab, secret


def test_allowed_roots_refuse_escapes(volumes: tuple[PlateFiles, Path]) -> None:
    lab, secret = volumes
    roots = AllowedRoots([lab.root])
    assert roots.check(lab.load_data, what="x") == lab.load_data.resolve()
    (lab.root / "escape").symlink_to(secret)
    (lab.root / "escape.csv").symlink_to(secret / "load_data.csv")
    refused = {
        f"{lab.root}/images/../load_data.csv": "'..'",
        str(secret / "load_data.csv"): "outside",
        str(lab.root / "escape" / "load_data.csv"): "outside",
        str(lab.root / "escape.csv"): "outside",
        "load_data.csv": "not an absolute path",
        "/": "outside",
    }
    for path, named in refused.items():
        with pytest.raises(InputError, match=named):
            roots.check(path, what="LoadData CSV")
    with pytest.raises(InputError, match="CPCNN_PLATES__ROOTS"):
        AllowedRoots([]).check(lab.load_data, what="x")
    # A root that is itself a symlink is compared by its target.
    (secret.parent / "lab-link").symlink_to(lab.root)
    assert AllowedRoots([secret.parent / "lab-link"]).check(lab.load_data, what="x") == lab.load_data.resolve()


@pytest.fixture
def plate_api(serve: Callable[..., httpx.Client], volumes: tuple[PlateFiles, Path]) -> httpx.Client:
    client = serve(plates=PlateSettings(roots=[volumes[0].root]))
    wait_until(lambda: client.get("/readyz").status_code == 200, timeout=30, what="/readyz")
    return client


def test_plate_requests_cannot_reach_outside_the_roots(
    plate_api: httpx.Client, volumes: tuple[PlateFiles, Path], tmp_path: Path
) -> None:
    lab, secret = volumes
    rows = pd.read_csv(lab.load_data)
    (lab.root / "images" / "escape").symlink_to(secret / "images")
    os.symlink(secret / "nuclei.csv", lab.root / "nuclei-link.csv")

    def csv(name: str, table: pd.DataFrame) -> str:
        table.to_csv(lab.root / name, index=False)
        return str(lab.root / name)

    traversal = rows.assign(PathName_OrigDNA="../secret/images/P1")
    absolute = rows.assign(PathName_OrigDNA=str(secret / "images" / "P1"))
    via_link = rows.assign(PathName_OrigDNA="images/escape/P1")
    illum_out = rows.assign(PathName_IllumDNA=str(secret / "illum" / "P1"))
    cases = {
        "LoadData ..": ({"load_data": str(lab.root / ".." / "secret" / "load_data.csv")}, "'..'"),
        "LoadData outside": ({"load_data": str(secret / "load_data.csv")}, "outside"),
        "image ..": ({"load_data": csv("traversal.csv", traversal)}, "'..'"),
        "image absolute outside": ({"load_data": csv("absolute.csv", absolute)}, "outside"),
        "image via symlinked folder": ({"load_data": csv("via-link.csv", via_link)}, "outside"),
        "illumination outside": ({"load_data": csv("illum-out.csv", illum_out)}, "outside"),
        "locations via symlink": ({"locations": str(lab.root / "nuclei-link.csv")}, "outside"),
        "platemap outside": ({"platemap": str(secret / "platemap.csv")}, "outside"),
        "platemap ..": ({"platemap": f"{lab.root}/images/../platemap.csv"}, "'..'"),
    }
    for case, (options, named) in cases.items():
        answer = submit(plate_api, lab, **options)
        assert answer.status_code == 422, (case, answer.text)
        assert named in answer.json()["detail"], (case, answer.json())
    uploaded = plate_api.post("/v1/plates", files={"load_data": ("l.csv", lab.load_data.read_bytes(), "text/csv")},
                              data={"locations": str(lab.nuclei)})
    assert uploaded.status_code == 422 and "outside" in uploaded.json()["detail"]  # relative paths, no anchor
    assert plate_api.get("/v1/plates").json()["data"] == []
    assert not any((tmp_path / "data" / "plates").iterdir())  # refused requests store nothing


def test_uploaded_csv_too_large_is_413(serve: Callable[..., httpx.Client], volumes: tuple[PlateFiles, Path]) -> None:
    lab, _ = volumes
    client = serve(plates=PlateSettings(roots=[lab.root], max_load_data_bytes=1024))
    answer = client.post("/v1/plates", files={"load_data": ("l.csv", b"x" * 4096, "text/csv")},
                         data={"detect_nuclei": "true"})
    assert answer.status_code == 413 and "load_data" in answer.json()["detail"]

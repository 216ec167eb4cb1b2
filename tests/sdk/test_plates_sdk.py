"""The SDK's plate methods against the real app (embedded mode): blocking and async, path and upload."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pandas as pd
import pytest
from _plate_files import PlateFiles, write_plate
from _servers import wait_until
from cpcnn.service.config import PlateSettings

from cpcnn.client import AsyncClient, Client, ConflictError, InputError, PlateFailed
from cpcnn.schemas import PlatePublic


@pytest.fixture
def lab(tmp_path: Path) -> PlateFiles:
    return write_plate(tmp_path / "lab", wells=("A01", "B01"), sites=2, absolute_paths=True)


@pytest.fixture
def url(serve: Callable[..., httpx.Client], lab: PlateFiles) -> str:
    client = serve(plates=PlateSettings(roots=[lab.root]))
    wait_until(lambda: client.get("/readyz").status_code == 200, timeout=30, what="/readyz")
    return str(client.base_url)


def test_profile_plate_returns_the_well_profiles(url: str, lab: PlateFiles, capsys: pytest.CaptureFixture[str]) -> None:
    with Client(url) as client:
        wells = client.profile_plate(lab.load_data, model="cnn1", locations=lab.nuclei, platemap=lab.platemap,
                                     illum=True, progress=True, timeout=60)
        assert isinstance(wells, pd.DataFrame) and sorted(wells["Metadata_Well"]) == ["A01", "B01"]
        listed = client.plates()
        assert len(listed) == 1 and listed[0].status == "succeeded" and listed[0].progress.cells == 16
        plate = client.plate(listed[0].id)
        pd.testing.assert_frame_equal(client.plate_wells(plate.id), wells)
        sites = client.plate_sites(plate.id)
        assert len(sites) == 4 and len(client.plate_cells(plate.id, "P1__B01__2")) == 4
        with pytest.raises(ConflictError, match="succeeded"):
            client.cancel_plate(plate.id)
    assert "4/4" in capsys.readouterr().err  # the progress bar reached every site


def test_uploaded_csv_with_absolute_paths_and_nuclei_detection(url: str, lab: PlateFiles) -> None:
    """An uploaded CSV's paths must be absolute; without illumination the Illum columns are not read."""

    async def run() -> PlatePublic | pd.DataFrame:
        async with AsyncClient(url) as client:
            return await client.profile_plate(lab.load_data.read_bytes(), model=None, detect_nuclei=True,
                                              channels={"DNA": "OrigDNA"}, wait=False)

    plate = asyncio.run(run())
    assert isinstance(plate, PlatePublic) and plate.load_data == "upload" and plate.detect_nuclei
    with Client(url) as client:
        finished = client.wait_plate(plate.id, progress=False, timeout=60)
        assert finished.progress.done == 4 and finished.progress.failed == 0
        wells = client.plate_wells(plate.id)
    assert (wells["Metadata_Count_Cells"] > 0).all()


def test_plate_errors_carry_the_servers_message(url: str, lab: PlateFiles, tmp_path: Path) -> None:
    with Client(url) as client, pytest.raises(InputError, match="outside"):
        client.profile_plate("/etc/hosts", model="cnn1", detect_nuclei=True)
    blank = pd.read_csv(lab.load_data).assign(FileName_OrigDNA="blank.tiff")
    (lab.root / "images" / "P1" / "blank.tiff").write_bytes(b"not a tiff")
    blank.to_csv(lab.root / "blank.csv", index=False)
    with Client(url) as client, pytest.raises(PlateFailed, match="blank.tiff"):
        client.profile_plate(lab.root / "blank.csv", model="cnn1", locations=lab.nuclei, progress=False, timeout=60)
    with httpx.Client(base_url=url) as raw:
        failed = raw.get("/v1/plates").json()["data"]
    assert [p["status"] for p in failed] == ["failed"] and failed[0]["progress"]["failed"] == 4
    wells = httpx.get(f"{url}/v1/plates/{failed[0]['id']}/wells")  # no table rather than an empty one
    assert wells.status_code == 404 and "every site failed" in wells.json()["detail"]

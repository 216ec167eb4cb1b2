"""Plate jobs through the API (in-process queue): results as ``cpcnn profile``, progress, downloads,
every bad input a 4xx naming the problem, cancel and resume, finishing exactly once, restart survival."""

from __future__ import annotations

import io
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from _plate_files import PlateFiles, write_plate
from _plate_jobs import assert_same_profiles, profile_locally, submit
from _servers import cpcnn_process, free_port, stop_process, wait_http, wait_until
from cpcnn.service import plate_lifecycle
from cpcnn.service.config import PlateSettings
from cpcnn.service.plate_store import PlateSpec, PlateStore


@pytest.fixture
def lab(tmp_path: Path) -> PlateFiles:
    return write_plate(tmp_path / "lab")


@pytest.fixture
def plate_api(serve: Callable[..., httpx.Client], lab: PlateFiles) -> httpx.Client:
    client = serve(plates=PlateSettings(roots=[lab.root], max_sites=50))
    wait_until(lambda: client.get("/readyz").status_code == 200, timeout=30, what="/readyz")
    return client


def test_plate_profiles_as_cpcnn_profile(
    plate_api: httpx.Client, lab: PlateFiles, models_dir: Path, tmp_path: Path
) -> None:
    created = submit(plate_api, lab)
    assert created.status_code == 202, created.text
    plate = created.json()
    assert created.headers["Location"] == f"/v1/plates/{plate['id']}"
    assert plate["progress"]["sites"] == 6 and plate["status"] in ("queued", "running", "succeeded")
    done = plate_api.get(f"/v1/plates/{plate['id']}", params={"wait": 60}).json()
    assert done["status"] == "succeeded", done
    progress = done["progress"]
    assert (progress["done"], progress["failed"], progress["pending"], progress["cells"]) == (6, 0, 0, 24)
    assert progress["cells_per_s"] > 0 and progress["eta_s"] == 0

    local = profile_locally(lab, models_dir, tmp_path / "local")
    wells = pd.read_parquet(io.BytesIO(plate_api.get(done["links"]["wells"]).content))
    assert_same_profiles(wells, pd.read_parquet(local.wells_path), ["Metadata_Well"])
    assert "Metadata_Treatment" in wells.columns
    sites = pd.read_parquet(io.BytesIO(plate_api.get(done["links"]["sites"]).content))
    assert_same_profiles(sites, pd.read_parquet(local.sites_path), ["Metadata_Well", "Metadata_Site"])
    as_csv = plate_api.get(done["links"]["wells"], params={"format": "csv"})
    assert as_csv.headers["content-type"].startswith("text/csv") and len(pd.read_csv(io.StringIO(as_csv.text))) == 3
    cells = plate_api.get(f"/v1/plates/{plate['id']}/cells/P1__A02__2")
    assert_same_profiles(pd.read_parquet(io.BytesIO(cells.content)),
                         pd.read_parquet(local.root / "cells" / "P1__A02__2.parquet"), ["Metadata_ObjectNumber"])
    assert plate_api.get(f"/v1/plates/{plate['id']}/cells/..%2Fplate.json").status_code == 404

    again = submit(plate_api, lab)  # the same request is the same plate, not a second run
    assert again.status_code == 200 and again.json()["id"] == plate["id"]
    assert [p["id"] for p in plate_api.get("/v1/plates").json()["data"]] == [plate["id"]]
    assert plate_api.delete(f"/v1/plates/{plate['id']}").status_code == 409


def _write_csv(table: pd.DataFrame, path: Path) -> str:
    table.to_csv(path, index=False)
    return str(path)


def test_bad_plates_are_4xx_naming_the_problem(
    plate_api: httpx.Client, serve: Callable[..., httpx.Client], lab: PlateFiles, tmp_path: Path
) -> None:
    good = submit(plate_api, lab).json()
    plate_api.get(f"/v1/plates/{good['id']}", params={"wait": 60})
    rows = pd.read_csv(lab.load_data)
    missing = rows.copy()
    missing.loc[3, "FileName_OrigER"] = "A02_s2_ER_gone.tiff"
    nuclei = pd.read_csv(lab.nuclei).assign(Metadata_Plate="P9")
    platemap = pd.read_csv(lab.platemap)
    platemap.loc[len(platemap)] = ["Z99", "T9"]
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"channels": "Nucleus=OrigDNA"}, 422, "Nucleus"),
        ({"channels": "DNA=OrigHoechst"}, 422, "OrigHoechst"),
        ({"load_data": _write_csv(missing, lab.root / "missing.csv")}, 422, "A02_s2_ER_gone.tiff"),
        ({"locations": _write_csv(nuclei, lab.root / "p9.csv")}, 422, "P9"),
        ({"load_data": _write_csv(pd.concat([rows, rows.iloc[[2]]]), lab.root / "dup.csv")}, 422, "A02"),
        ({"platemap": _write_csv(platemap, lab.root / "z99.csv")}, 422, "Z99"),
        ({"load_data": "/etc/passwd"}, 422, "outside"),
        ({"load_data": f"{lab.root}/../lab/load_data.csv"}, 422, "'..'"),
        ({"locations": None}, 422, "detect_nuclei"),
        ({"model": "nope"}, 422, "nope"),
        ({"load_data": str(lab.root / "absent.csv")}, 422, "absent.csv"),
    ]
    for options, status, named in cases:
        answer = submit(plate_api, lab, **options)
        assert answer.status_code == status, (options, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
        assert named in answer.json()["detail"], (options, answer.json())
    assert plate_api.post("/v1/plates", content=b"{}", headers={"content-type": "application/json"}).status_code == 422

    small = serve(plates=PlateSettings(roots=[lab.root], max_sites=5))
    too_many = submit(small, lab)
    assert too_many.status_code == 413 and "6 sites" in too_many.json()["detail"]
    disabled = submit(serve(), lab)
    assert disabled.status_code == 422 and "CPCNN_PLATES__ROOTS" in disabled.json()["detail"]

    # Nothing a refused request did is stored; the plate stored before is whole.
    assert [p["id"] for p in plate_api.get("/v1/plates").json()["data"]] == [good["id"]]
    kept = plate_api.get(f"/v1/plates/{good['id']}").json()
    assert kept["status"] == "succeeded" and kept["progress"]["done"] == 6
    assert plate_api.get(kept["links"]["wells"]).status_code == 200


def test_finished_exactly_once_when_workers_race(tmp_path: Path, lab: PlateFiles) -> None:
    """Every site done; eight threads finish the plate at once: the tables are written by one."""
    from cpcnn.plates.load_data import read_load_data

    plates = PlateStore(tmp_path / "data")
    sites = read_load_data(lab.load_data)
    spec = PlateSpec(id="0" * 32, model="cnn1", load_data=str(lab.load_data), locations=str(lab.nuclei),
                     n_sites=len(sites))
    assert plates.create(spec, sites, lab.load_data.read_bytes())
    output = plates.output(spec.id)
    for site in sites[:-1]:
        output.write_site(site, pd.DataFrame({"Metadata_Plate": [site.plate], "Metadata_Well": [site.well],
                                              "Metadata_Site": [site.site], "f_0": [1.0]}))
    plates.record_failure(spec.id, sites[-1], "unreadable")
    calls: list[int] = []

    def finisher(store: PlateStore, plate: PlateSpec) -> dict[str, Any]:
        calls.append(1)
        time.sleep(0.2)  # a slow finish: every other thread arrives while it runs
        return {"sites_done": len(sites) - 1}

    barrier = threading.Barrier(8)
    results: list[bool] = []

    def race() -> None:
        barrier.wait()
        results.append(plate_lifecycle.finish_if_complete(plates, spec.id, finisher))

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and sorted(results) == [False] * 7 + [True]
    assert plates.is_finished(spec.id) and not (plates.folder(spec.id) / "finishing.lock").exists()
    assert plate_lifecycle.finish_if_complete(plates, spec.id, finisher) is False and len(calls) == 1
    public = plates.public(spec.id)
    assert public.status == "succeeded" and public.progress.failed == 1
    assert public.failures[0].reason == "unreadable"


@pytest.mark.slow
def test_plate_survives_a_killed_api(tmp_path: Path, models_dir: Path) -> None:
    """``cpcnn serve`` is SIGKILLed mid-plate; started again it completes the plate, no site computed twice."""
    lab = write_plate(tmp_path / "lab", wells=("A01", "A02", "B01", "B02"), sites=3, size=200)
    home = tmp_path / "home"
    shutil.copytree(models_dir / "cnn1", home / "models" / "cnn1")
    from _tiny_model import save_slow_model

    save_slow_model(home / "models", "slow", width=96)
    env = {"CPCNN_HOME": str(home), "CPCNN_DATA_DIR": str(tmp_path / "data"), "CPCNN_ENV": "dev",
           "CPCNN_PLATES__ROOTS": str(lab.root), "CPCNN_DEFAULT_MODEL": "slow"}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["serve", "--port", str(port), "--device", "cpu", "--threads", "1", "--slots", "1"]
    first = cpcnn_process(args, env=env, log=tmp_path / "serve-1.log")
    try:
        wait_http(f"{url}/healthz")
        with httpx.Client(base_url=url, timeout=30) as client:
            wait_until(lambda: client.get("/readyz").status_code == 200, timeout=60, what="model loaded")
            plate = submit(client, lab, model="slow").json()
            wait_until(lambda: client.get(f"/v1/plates/{plate['id']}").json()["progress"]["done"] >= 2,
                       timeout=120, what="two sites done")
        stop_process(first, sig=signal.SIGKILL)
        cells = tmp_path / "data" / "plates" / plate["id"] / "output" / "cells"
        before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cells.glob("*.parquet")}
        assert 2 <= len(before) < 12
        second = cpcnn_process(args, env=env, log=tmp_path / "serve-2.log")
        try:
            wait_http(f"{url}/healthz")
            with httpx.Client(base_url=url, timeout=30) as client:
                done = client.get(f"/v1/plates/{plate['id']}", params={"wait": 240}).json()
        finally:
            stop_process(second)
    finally:
        stop_process(first, sig=signal.SIGKILL)
    assert done["status"] == "succeeded" and done["progress"]["done"] == 12, done
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cells.glob("*.parquet")}
    assert {name: after[name] for name in before} == before  # done sites were not written again
    assert (tmp_path / "data" / "plates" / plate["id"] / "output" / "wells.parquet").is_file()


@pytest.mark.slow
def test_plate_on_two_rq_workers_cancel_resume_and_a_killed_worker(tmp_path: Path, models_dir: Path) -> None:
    """Redis mode, two ``cpcnn worker`` processes: a cancelled plate runs nothing and resumes when sent
    again; one worker SIGKILLed mid-plate and restarted, the API restarted; the plate completes as
    ``cpcnn profile`` would write it, each site written once and the plate finished once."""
    from _servers import RedisServer, live_server
    from cpcnn.service.app.main import create_app
    from cpcnn.service.config import ApiSettings, WorkerTuning

    lab = write_plate(tmp_path / "lab", wells=("A01", "A02", "B01", "B02"), sites=3, size=200)
    home = tmp_path / "home"
    from _tiny_model import save_slow_model

    save_slow_model(home / "models", "slow", width=96)
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    env = {"CPCNN_HOME": str(home), "CPCNN_DATA_DIR": str(tmp_path / "data"), "CPCNN_REDIS_URL": redis.url,
           "CPCNN_ENV": "dev"}
    settings = ApiSettings(env="dev", redis_url=redis.url, data_dir=tmp_path / "data", models_dir=home / "models",
                           default_model="slow", worker=WorkerTuning(heartbeat_s=1),
                           plates=PlateSettings(roots=[lab.root]))
    workers: dict[str, Any] = {}

    def start_worker(name: str) -> None:
        args = ["-v", "worker", "--name", name, "--model", "slow", "--device", "cpu", "--threads", "1",
                "--slots", "1", "--heartbeat-s", "1", "--maintenance-s", "2"]
        workers[name] = cpcnn_process(args, env=env, log=tmp_path / f"{name}.log")

    try:
        with live_server(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
            plate = submit(client, lab).json()
            assert client.get("/readyz").json()["queue_depth"] == 12
            cancelled = client.delete(f"/v1/plates/{plate['id']}").json()
            assert cancelled["status"] == "cancelled" and client.get("/readyz").json()["queue_depth"] == 0
            start_worker("wa")
            start_worker("wb")
            wait_until(lambda: len(client.get("/readyz").json()["workers"]) == 2, timeout=60, what="two workers")
            assert client.get(f"/v1/plates/{plate['id']}").json()["progress"]["done"] == 0

            resumed = submit(client, lab)
            assert resumed.status_code == 202 and resumed.json()["id"] == plate["id"]
            wait_until(lambda: client.get(f"/v1/plates/{plate['id']}").json()["progress"]["done"] >= 3,
                       timeout=120, what="three sites done")
            stop_process(workers["wa"], sig=signal.SIGKILL)
        # The API stops too; started again it puts back in line only what Redis no longer holds.
        start_worker("wa")
        with live_server(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
            done = client.get(f"/v1/plates/{plate['id']}", params={"wait": 240}).json()
            assert done["status"] == "succeeded" and done["progress"]["done"] == 12, done
            wells = pd.read_parquet(io.BytesIO(client.get(done["links"]["wells"]).content))
    finally:
        for process in workers.values():
            stop_process(process)
        redis.stop(kill=True)
    local = profile_locally(lab, home / "models", tmp_path / "local", model="slow")
    assert_same_profiles(wells, pd.read_parquet(local.wells_path), ["Metadata_Well"])
    logs = "".join((tmp_path / f"{name}.log").read_text() for name in ("wa", "wb"))
    written = [line for line in logs.splitlines() if f"plate {plate['id']} plate P1" in line and "n_cells=" in line]
    assert len(written) == 12, logs[-3000:]  # each site computed and written once, across both workers
    assert logs.count(f"plate {plate['id']} finished") == 1


def test_synthetic_screen_through_the_api(
    serve: Callable[..., httpx.Client], models_dir: Path, tmp_path: Path
) -> None:
    """``cpcnn synth plate``'s files (relative PathName values, nuclei table, platemap with MoA) as they are."""
    from cpcnn.synth.plate import write_screen

    screen = write_screen(tmp_path / "screen", wells=2, sites=2, cells_per_site=5, size=200)
    client = serve(plates=PlateSettings(roots=[tmp_path / "screen"]))
    wait_until(lambda: client.get("/readyz").status_code == 200, timeout=30, what="/readyz")
    plate = submit(client, screen).json()  # type: ignore[arg-type]
    done = client.get(f"/v1/plates/{plate['id']}", params={"wait": 60}).json()
    assert done["status"] == "succeeded" and done["progress"]["done"] == 4, done
    wells = pd.read_parquet(io.BytesIO(client.get(done["links"]["wells"]).content))
    local = profile_locally(screen, models_dir, tmp_path / "local")  # type: ignore[arg-type]
    assert_same_profiles(wells, pd.read_parquet(local.wells_path), ["Metadata_Well"])
    assert {"Metadata_Treatment", "Metadata_MoA"} <= set(wells.columns)


@pytest.mark.slow
def test_cancel_then_resume_in_process(serve: Callable[..., httpx.Client], tmp_path: Path) -> None:
    """DELETE stops a plate (no further site runs, done sites kept); the same request resumes it."""
    from _tiny_model import save_slow_model

    lab = write_plate(tmp_path / "lab", wells=("A01", "A02", "B01", "B02"), sites=3)
    save_slow_model(tmp_path / "slow-models", "slow", width=96)
    client = serve(models_dir=tmp_path / "slow-models", default_model="slow",
                   plates=PlateSettings(roots=[lab.root]))
    wait_until(lambda: client.get("/readyz").status_code == 200, timeout=60, what="/readyz")
    plate = submit(client, lab).json()
    cancelled = client.delete(f"/v1/plates/{plate['id']}").json()
    assert cancelled["status"] == "cancelled" and cancelled["progress"]["pending"] > 0, cancelled
    time.sleep(4.0)  # the sites already running (two slots) may still land; nothing after them

    def counts() -> tuple[int, int, int]:
        progress = client.get(f"/v1/plates/{plate['id']}").json()["progress"]
        return progress["done"], progress["failed"], progress["pending"]

    settled = client.get(f"/v1/plates/{plate['id']}").json()
    time.sleep(2.0)
    assert counts() == (settled["progress"]["done"], 0, 12 - settled["progress"]["done"])
    assert settled["progress"]["done"] <= cancelled["progress"]["done"] + 2
    assert settled["status"] == "cancelled" and client.get(f"/v1/plates/{plate['id']}/wells").status_code == 409
    cells = tmp_path / "data" / "plates" / plate["id"] / "output" / "cells"
    kept = {p.name: p.stat().st_mtime_ns for p in cells.glob("*.parquet")}

    resumed = submit(client, lab)
    assert resumed.status_code == 202 and resumed.json()["status"] != "cancelled"
    done = client.get(f"/v1/plates/{plate['id']}", params={"wait": 120}).json()
    assert done["status"] == "succeeded" and done["progress"]["done"] == 12, done
    assert {name: (cells / name).stat().st_mtime_ns for name in kept} == kept


def test_sites_over_the_cell_limit_fail_naming_it(serve: Callable[..., httpx.Client], lab: PlateFiles) -> None:
    from cpcnn.service.config import Limits

    client = serve(plates=PlateSettings(roots=[lab.root]), limits=Limits(max_cells=3))
    wait_until(lambda: client.get("/readyz").status_code == 200, timeout=30, what="/readyz")
    plate = submit(client, lab).json()
    done = client.get(f"/v1/plates/{plate['id']}", params={"wait": 60}).json()
    assert done["status"] == "failed" and done["progress"]["failed"] == 6, done
    assert "4 cells, over the limit of 3" in done["failures"][0]["reason"]

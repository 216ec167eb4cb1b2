"""Profiles over HTTP: upload -> sphering -> library -> match -> evaluate, persistence across restarts."""

from __future__ import annotations

import io
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from _profiles_data import LINCS, LINCS_CONTROLS, LINCS_ID, LINCS_MOA, synthetic_profiles
from _servers import cpcnn_process, free_port, live_server, stop_process, wait_http
from cpcnn.service.app.main import create_app
from cpcnn.service.config import ApiSettings
from fastapi import FastAPI

from cpcnn.metrics import evaluate_retrieval
from cpcnn.profiles import Library, fit_sphering, read_profiles

ID, MOA, CONTROLS = "Metadata_broad_sample", "Metadata_moa", "Metadata_broad_sample=DMSO"


@pytest.fixture
def served(make_settings: Callable[..., ApiSettings]) -> Iterator[tuple[httpx.Client, FastAPI]]:
    app = create_app(make_settings())
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client, app


def parquet_bytes(table: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    return buffer.getvalue()


def upload(client: httpx.Client, data: bytes, filename: str = "t.parquet", **fields: Any) -> httpx.Response:
    return client.post(
        "/v1/tables", files={"file": (filename, data, "application/octet-stream")}, data=fields
    )


def created(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def download(client: httpx.Client, table_id: str) -> pd.DataFrame:
    response = client.get(f"/v1/tables/{table_id}/data")
    assert (
        response.status_code == 200 and response.headers["content-type"] == "application/vnd.apache.parquet"
    )
    return pd.read_parquet(io.BytesIO(response.content))


def workflow(
    client: httpx.Client,
    data: bytes,
    filename: str,
    *,
    controls: str,
    lam: float,
    id_col: str,
    annotation: str,
) -> dict[str, Any]:
    """Upload, fit, apply, build a library from the sphered table, match it against itself, evaluate."""
    table = created(upload(client, data, filename))
    transform = created(
        client.post("/v1/transforms", json={"table_id": table["id"], "controls": controls, "lambda": lam})
    )
    sphered = created(client.post(f"/v1/transforms/{transform['id']}/apply", json={"table_id": table["id"]}))
    library = created(
        client.post(
            "/v1/libraries",
            json={"table_id": sphered["id"], "id_column": id_col, "annotations": [annotation]},
        )
    )
    match = client.post(
        f"/v1/libraries/{library['id']}/match",
        json={"table_id": sphered["id"], "top_k": 3, "leave_one_out": True},
    )
    assert match.status_code == 200, match.text
    evaluation = client.post(
        "/v1/evaluate", json={"table_id": sphered["id"], "id_column": id_col, "annotation": annotation}
    )
    assert evaluation.status_code == 200, evaluation.text
    return {
        "table": table,
        "transform": transform,
        "sphered": sphered,
        "library": library,
        "match": match.json(),
        "evaluation": evaluation.json(),
    }


def check_against_library(
    client: httpx.Client,
    run: dict[str, Any],
    local: pd.DataFrame,
    *,
    controls: str,
    lam: float,
    id_col: str,
    annotation: str,
) -> None:
    """Every answer equals the library functions on the same table."""
    sphering = fit_sphering(local, controls=controls, lam=lam)
    expected = sphering.apply(local)
    assert run["transform"]["n_controls"] == sphering.n_controls and run["transform"]["rank"] == sphering.rank
    got = download(client, run["sphered"]["id"])
    np.testing.assert_array_equal(
        got[list(sphering.features)].to_numpy(), expected[list(sphering.features)].to_numpy()
    )
    library = Library.from_profiles(expected, id_col=id_col, annotations=[annotation])
    matches = library.match(expected, k=3, leave_one_out=True)
    rows = run["match"]["matches"]
    assert run["match"]["n_queries"] == len(expected) and len(rows) == len(matches)
    assert [m["library_id"] for m in rows] == matches["library_id"].astype(str).tolist()
    np.testing.assert_allclose([m["score"] for m in rows], matches["score"].to_numpy(), rtol=1e-6)
    assert rows[0]["annotations"].keys() == {annotation}
    reference = evaluate_retrieval(expected, id_col=id_col, annotation=annotation).to_dict()
    evaluation = run["evaluation"]
    assert evaluation.pop("table_id") == run["sphered"]["id"]
    assert evaluation == reference


def test_synthetic_round_trip_equals_the_library(served: tuple[httpx.Client, FastAPI]) -> None:
    client, app = served
    local = synthetic_profiles()
    run = workflow(
        client,
        parquet_bytes(local),
        "synthetic.parquet",
        controls=CONTROLS,
        lam=1e-3,
        id_col=ID,
        annotation=MOA,
    )
    assert run["table"]["n_rows"] == 54 and run["table"]["n_features"] == 12
    assert run["table"]["metadata_columns"] == ["Metadata_Plate", "Metadata_Well", ID, MOA]
    assert run["transform"]["rank_deficient"] is False and run["transform"]["warnings"] == []
    assert run["sphered"]["provenance"] == {
        "transform_id": run["transform"]["id"],
        "table_id": run["table"]["id"],
    }
    assert run["library"]["n_profiles"] == 9 and run["library"]["annotation_columns"] == [MOA]
    assert run["evaluation"]["n_queries"] == 8
    check_against_library(client, run, local, controls=CONTROLS, lam=1e-3, id_col=ID, annotation=MOA)


def test_same_requests_give_the_same_artifacts(served: tuple[httpx.Client, FastAPI]) -> None:
    client, _ = served
    data = parquet_bytes(synthetic_profiles())
    first = workflow(client, data, "a.parquet", controls=CONTROLS, lam=0.5, id_col=ID, annotation=MOA)
    again = workflow(client, data, "b.parquet", controls=CONTROLS, lam=0.5, id_col=ID, annotation=MOA)
    for key in ("table", "transform", "sphered", "library"):
        assert again[key]["id"] == first[key]["id"]
    assert again["match"] == first["match"]
    assert download(client, first["sphered"]["id"]).equals(download(client, again["sphered"]["id"]))
    assert client.get("/v1/tables").json()["count"] == 2  # the upload and its sphered table
    other = created(
        client.post(
            "/v1/transforms",
            json={
                "table_id": first["table"]["id"],
                "controls": CONTROLS,
                "lambda": 0.25,
                "method": "zca-cor",
            },
        )
    )
    assert other["id"] != first["transform"]["id"] and other["method"] == "zca-cor"


def test_match_is_served_from_the_open_memory_mapped_library(
    served: tuple[httpx.Client, FastAPI], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, app = served
    local = synthetic_profiles()
    table = created(upload(client, parquet_bytes(local)))
    library = created(
        client.post("/v1/libraries", json={"table_id": table["id"], "id_column": ID, "annotations": [MOA]})
    )
    loads: list[Path] = []
    real_load = Library.load

    def counting_load(directory: Path, *, mmap: bool = True) -> Library:
        loads.append(Path(directory))
        return real_load(directory, mmap=mmap)

    monkeypatch.setattr(Library, "load", staticmethod(counting_load))
    reads: list[str] = []
    store = app.state.service.profiles
    monkeypatch.setattr(store, "read_table", lambda table_id: reads.append(table_id) or pd.DataFrame())
    features = local[[f"f{j}" for j in range(12)]].to_numpy()
    for _ in range(3):
        response = client.post(
            f"/v1/libraries/{library['id']}/match",
            json={
                "profiles": {"ids": local[ID].tolist()[:5], "features": features[:5].tolist()},
                "top_k": 2,
                "leave_one_out": True,
            },
        )
        assert response.status_code == 200, response.text
    assert len(loads) == 1 and reads == []
    opened = store.library(library["id"])
    assert isinstance(opened.features, np.memmap) and not opened.features.flags.writeable
    matches = response.json()["matches"]
    assert [m["rank"] for m in matches[:2]] == [1, 2] and all(m["library_id"] != "DMSO" for m in matches[:2])
    assert store.open_libraries() == [library["id"]]
    assert client.delete(f"/v1/libraries/{library['id']}").status_code == 204
    assert store.open_libraries() == []


def test_upload_csv_gz_with_explicit_features(served: tuple[httpx.Client, FastAPI]) -> None:
    client, _ = served
    local = synthetic_profiles()
    local["notes"] = "text"  # neither Metadata_ nor a feature: dropped when features are named
    buffer = io.BytesIO()
    local.to_csv(buffer, index=False, compression="gzip")
    table = created(upload(client, buffer.getvalue(), "t.csv.gz", features="f0,f1,f2", name="three"))
    assert (
        table["n_features"] == 3 and table["name"] == "three" and table["feature_names"] == ["f0", "f1", "f2"]
    )
    repeated = created(
        client.post(
            "/v1/tables",
            files=[
                ("file", ("t.csv.gz", buffer.getvalue(), "text/csv")),
                ("features", (None, "f0")),
                ("features", (None, "f1")),
            ],
        )
    )
    assert repeated["feature_names"] == ["f0", "f1"]
    assert client.get(f"/v1/tables/{table['id']}").json() == table
    csv = client.get(f"/v1/tables/{table['id']}/data", params={"format": "csv"})
    assert csv.headers["content-type"].startswith("text/csv")
    assert list(pd.read_csv(io.StringIO(csv.text)).columns) == [*table["metadata_columns"], "f0", "f1", "f2"]


@pytest.mark.skipif(not LINCS.is_file(), reason="LINCS plate (../shared) not present")
def test_lincs_plate_round_trip(served: tuple[httpx.Client, FastAPI]) -> None:
    client, _ = served
    run = workflow(
        client,
        LINCS.read_bytes(),
        LINCS.name,
        controls=LINCS_CONTROLS,
        lam=1e-2,
        id_col=LINCS_ID,
        annotation=LINCS_MOA,
    )
    assert run["table"]["n_rows"] == 384 and run["table"]["n_features"] == 454
    assert run["transform"]["n_controls"] == 24 and run["transform"]["rank_deficient"] is True
    assert "dominates" in run["transform"]["warnings"][0]
    assert run["library"]["n_profiles"] == 59
    check_against_library(
        client,
        run,
        read_profiles(LINCS),
        controls=LINCS_CONTROLS,
        lam=1e-2,
        id_col=LINCS_ID,
        annotation=LINCS_MOA,
    )
    raw = client.post(
        "/v1/evaluate", json={"table_id": run["table"]["id"], "id_column": LINCS_ID, "annotation": LINCS_MOA}
    ).json()
    reference = evaluate_retrieval(read_profiles(LINCS), id_col=LINCS_ID, annotation=LINCS_MOA).to_dict()
    assert {k: v for k, v in raw.items() if k != "table_id"} == reference
    assert raw["n_queries"] == 16


def _listing(client: httpx.Client) -> dict[str, list[str]]:
    return {
        kind: sorted(item["id"] for item in client.get(f"/v1/{kind}").json()["data"])
        for kind in ("tables", "transforms", "libraries")
    }


def test_artifacts_survive_a_new_app_on_the_same_data_dir(make_settings: Callable[..., ApiSettings]) -> None:
    local = synthetic_profiles()
    with live_server(create_app(make_settings())) as url, httpx.Client(base_url=url) as client:
        run = workflow(
            client, parquet_bytes(local), "t.parquet", controls=CONTROLS, lam=1e-2, id_col=ID, annotation=MOA
        )
        before = _listing(client)
    with live_server(create_app(make_settings())) as url, httpx.Client(base_url=url) as client:
        assert _listing(client) == before
        assert client.get(f"/v1/transforms/{run['transform']['id']}").json() == run["transform"]
        match = client.post(
            f"/v1/libraries/{run['library']['id']}/match",
            json={"table_id": run["sphered"]["id"], "top_k": 3, "leave_one_out": True},
        )
        assert match.json() == run["match"]
        reapplied = created(
            client.post(
                f"/v1/transforms/{run['transform']['id']}/apply", json={"table_id": run["table"]["id"]}
            )
        )
        assert reapplied == run["sphered"]


@pytest.mark.slow
def test_artifacts_survive_restarting_cpcnn_serve(tmp_path: Path) -> None:
    env = {"CPCNN_HOME": str(tmp_path / "home"), "CPCNN_DATA_DIR": str(tmp_path / "data"), "CPCNN_ENV": "dev"}
    data = parquet_bytes(synthetic_profiles())
    seen: list[dict[str, Any]] = []
    for attempt in range(2):
        port = free_port()
        process = cpcnn_process(
            ["serve", "--port", str(port), "--device", "cpu"], env=env, log=tmp_path / f"serve-{attempt}.log"
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_http(f"{url}/healthz", timeout=60)
            with httpx.Client(base_url=url, timeout=30) as client:
                if attempt == 0:
                    workflow(
                        client, data, "t.parquet", controls=CONTROLS, lam=1e-2, id_col=ID, annotation=MOA
                    )
                listing = _listing(client)
                library = listing["libraries"][0]
                match = client.post(
                    f"/v1/libraries/{library}/match", json={"table_id": listing["tables"][0], "top_k": 2}
                ).json()
                seen.append({"listing": listing, "match": match})
        finally:
            stop_process(process, sig=signal.SIGTERM)
    assert seen[1] == seen[0]
    assert [len(seen[0]["listing"][k]) for k in ("tables", "transforms", "libraries")] == [2, 1, 1]


def test_features_selection_on_every_profile_endpoint(served: tuple[httpx.Client, FastAPI]) -> None:
    """A table from the previous cpcnn (unprefixed coordinates) plus a numeric column that is not a
    feature: coordinates are kept as metadata, and ``features`` picks the rest on every endpoint."""
    client, _ = served
    table = synthetic_profiles()
    rng = np.random.default_rng(1)
    table["Nuclei_Location_Center_X"] = rng.uniform(0, 1000, len(table))
    table["Nuclei_Location_Center_Y"] = rng.uniform(0, 1000, len(table))
    table["Cells_AreaShape_Area"] = rng.normal(500, 50, len(table)).astype(np.float32)
    names = [f"f{j}" for j in range(12)]
    stored = created(upload(client, parquet_bytes(table), "legacy.parquet"))
    assert stored["feature_names"] == [*names, "Cells_AreaShape_Area"]
    assert stored["metadata_columns"][-2:] == ["Nuclei_Location_Center_X", "Nuclei_Location_Center_Y"]

    body = {"table_id": stored["id"], "controls": CONTROLS, "lambda": 0.1}
    transform = created(client.post("/v1/transforms", json={**body, "features": ["f*"]}))
    assert transform["feature_names"] == names
    assert created(client.post("/v1/transforms", json=body))["id"] != transform["id"]
    apply = f"/v1/transforms/{transform['id']}/apply"
    mismatch = client.post(apply, json={"table_id": stored["id"]})
    assert mismatch.status_code == 422 and "Cells_AreaShape_Area" in mismatch.json()["detail"]
    sphered = created(client.post(apply, json={"table_id": stored["id"], "features": ["f*"]}))
    assert sphered["feature_names"] == names  # the unselected column is not carried into the sphered table
    assert "Nuclei_Location_Center_X" in sphered["metadata_columns"]
    local = fit_sphering(table, controls=CONTROLS, lam=0.1, features="f*").apply(table, features="f*")
    np.testing.assert_allclose(download(client, sphered["id"])[names].to_numpy(), local[names].to_numpy(),
                               rtol=1e-5, atol=1e-5)

    library = created(client.post("/v1/libraries", json={"table_id": stored["id"], "id_column": ID,
                                                         "annotations": [MOA], "features": ["f0", "f1"]}))
    assert library["feature_names"] == ["f0", "f1"]
    # ids and annotations are refused when they are among the features used, and only then
    by_area = client.post("/v1/libraries", json={"table_id": stored["id"], "id_column": "Cells_AreaShape_Area",
                                                 "features": ["f*"]})
    assert by_area.status_code == 201, by_area.text
    selected_id = client.post("/v1/libraries", json={"table_id": stored["id"], "id_column": "f3", "features": ["f*"]})
    assert selected_id.status_code == 422 and "f3 is a feature column" in selected_id.json()["detail"]
    unselected = client.post("/v1/libraries", json={"table_id": stored["id"], "id_column": ID, "annotations": ["f3"],
                                                    "features": ["f[01]"]})
    assert unselected.status_code == 201, unselected.text
    match = f"/v1/libraries/{library['id']}/match"
    found = client.post(match, json={"table_id": stored["id"], "top_k": 2, "features": ["f[01]"]})
    assert found.status_code == 200 and found.json()["n_queries"] == len(table)
    assert client.post(match, json={"table_id": stored["id"], "top_k": 2}).status_code == 422
    inline = client.post(match, json={"profiles": {"features": [[1.0, 2.0]]}, "features": ["f0"]})
    assert inline.status_code == 422

    evaluation = client.post("/v1/evaluate", json={"table_id": stored["id"], "id_column": ID, "annotation": MOA,
                                                   "features": ["f*"]})
    assert evaluation.status_code == 200
    expected = evaluate_retrieval(table, id_col=ID, annotation=MOA, features="f*")
    assert evaluation.json()["mean_average_precision"] == pytest.approx(expected.mean_average_precision, rel=1e-5)
    paper = client.post("/v1/evaluate", json={"table_id": stored["id"], "id_column": ID, "annotation": MOA,
                                              "features": ["f*"], "convention": "paper"})
    expected_paper = evaluate_retrieval(table, id_col=ID, annotation=MOA, features="f*", convention="paper")
    assert paper.status_code == 200 and paper.json()["convention"] == "paper"
    assert {k: v for k, v in paper.json().items() if k != "table_id"} == expected_paper.to_dict()
    unknown = client.post("/v1/evaluate", json={"table_id": stored["id"], "id_column": ID, "annotation": MOA,
                                                "features": ["nope_*"]})
    assert unknown.status_code == 422 and "nope_*" in unknown.json()["detail"]
    huge = client.post("/v1/evaluate", json={"table_id": stored["id"], "id_column": ID, "annotation": MOA,
                                             "features": ["f0"] * 20_001})
    assert huge.status_code == 422


def test_evaluate_convention(served: tuple[httpx.Client, FastAPI]) -> None:
    """``convention`` selects the metric rules; the answer names it and equals the library's result."""
    client, _ = served
    angles = np.deg2rad([0, 15, 40, 70, 120, 210])  # hand-computed in test_metrics_conventions
    table = pd.DataFrame(
        {
            "Metadata_id": [f"T{i}" for i in range(6)],
            "Metadata_moa": ["a", "b", "a", "a|c", "c", "d"],
            "f0": np.cos(angles).astype(np.float32),
            "f1": np.sin(angles).astype(np.float32),
        }
    )
    table_id = created(upload(client, parquet_bytes(table)))["id"]
    body = {"table_id": table_id, "id_column": "Metadata_id", "annotation": "Metadata_moa"}
    default = client.post("/v1/evaluate", json=body).json()
    paper = client.post("/v1/evaluate", json=body | {"convention": "paper"}).json()
    assert default["convention"] == "copairs" and paper["convention"] == "paper"
    assert paper["mean_average_precision"] == pytest.approx(53 / 72) and paper["folds_of_enrichment"] == 1.5
    assert (paper["n_queries"], paper["n_queries_average_precision"]) == (4, 3)
    for raw, convention in ((default, "copairs"), (paper, "paper")):
        reference = evaluate_retrieval(
            table, id_col="Metadata_id", annotation="Metadata_moa", convention=convention
        ).to_dict()
        assert {k: v for k, v in raw.items() if k != "table_id"} == reference
    bad = client.post("/v1/evaluate", json=body | {"convention": "nature"})
    assert bad.status_code == 422 and "convention" in bad.text

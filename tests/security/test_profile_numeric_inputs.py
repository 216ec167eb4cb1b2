"""Numbers a client controls on the profile endpoints: non-finite, subnormal or out-of-range values
are a 422 naming the problem, never a 500 and never a stored artifact full of infinities."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _jobs_fixtures
import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _profiles_data import synthetic_profiles
from cpcnn.service.profile_store import ProfileStore, artifact_id

from cpcnn.errors import InputError
from cpcnn.metrics import evaluate_retrieval
from cpcnn.profiles import Library, fit_sphering
from cpcnn.profiles.sphering import check_lambda

problem = _jobs_fixtures.problem

ID, MOA, CONTROLS = "Metadata_broad_sample", "Metadata_moa", "Metadata_broad_sample=DMSO"


def _parquet(table: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    return buffer.getvalue()


def _upload(client: httpx.Client, table: pd.DataFrame) -> str:
    response = client.post("/v1/tables", files={"file": ("t.parquet", _parquet(table), "application/octet-stream")})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _listing(client: httpx.Client) -> dict[str, Any]:
    return {kind: client.get(f"/v1/{kind}").json()["count"] for kind in ("tables", "transforms", "libraries")}


@pytest.fixture
def client(serve: Callable[..., httpx.Client]) -> httpx.Client:
    return serve()


def test_evaluate_with_a_feature_column_as_annotation_or_id(client: httpx.Client) -> None:
    table = _upload(client, synthetic_profiles())
    for body in ({"id_column": ID, "annotation": "f0"}, {"id_column": "f1", "annotation": MOA}):
        column = body["annotation"] if body["annotation"] == "f0" else body["id_column"]
        response = client.post("/v1/evaluate", json={"table_id": table, **body})
        problem(response, 422, "input_error", column, "feature column")


@pytest.mark.parametrize("lam", ["1e-320", "4.9e-324", "2.2e-308", "1e400", "NaN", "Infinity", "-1e-300"])
def test_lambda_that_is_not_a_positive_normal_float(client: httpx.Client, lam: str) -> None:
    table = _upload(client, synthetic_profiles())
    before = _listing(client)
    body = f'{{"table_id": "{table}", "controls": "{CONTROLS}", "lambda": {lam}}}'
    response = client.post("/v1/transforms", content=body, headers={"content-type": "application/json"})
    problem(response, 422, "input_error", "lambda")
    assert _listing(client) == before


def test_check_lambda_rejects_subnormal_values() -> None:
    for lam in (1e-320, 5e-324, float("nan"), float("inf"), -1.0, 0.0):
        with pytest.raises(InputError, match="lambda"):
            check_lambda(lam)
    check_lambda(np.finfo(np.float64).tiny)
    check_lambda(1.0)


def test_tiny_lambda_never_stores_a_table_of_infinities(client: httpx.Client) -> None:
    """Rank-deficient controls and lambda near the float64 minimum: W is finite in float64 (1e150) but the
    sphered float32 table would be +-inf; the apply is refused and nothing is stored."""
    profiles = synthetic_profiles(n_features=12, n_controls=4)
    table = _upload(client, profiles)
    fitted = client.post("/v1/transforms", json={"table_id": table, "controls": CONTROLS, "lambda": 1e-300})
    if fitted.status_code == 422:  # refusing at fit time is as good
        problem(fitted, 422, "input_error", "finite")
        return
    assert fitted.status_code == 201, fitted.text
    before = _listing(client)
    response = client.post(f"/v1/transforms/{fitted.json()['id']}/apply", json={"table_id": table})
    problem(response, 422, "input_error", "finite", "lambda")
    assert _listing(client) == before


def test_transform_matrix_beyond_its_dtype_is_refused() -> None:
    profiles = synthetic_profiles(n_features=12, n_controls=4)
    with pytest.raises(InputError, match="finite"):
        fit_sphering(profiles, controls=CONTROLS, lam=1e-300, dtype=np.float32)


def _stored_with_infinity(client: httpx.Client, data_dir: Path) -> str:
    """A table holding +inf, as an older server could have stored it (uploads refuse them now)."""
    table_id = _upload(client, synthetic_profiles())
    path = data_dir / "profiles" / "tables" / f"{table_id}.parquet"
    frame = pq.read_table(path)
    values = frame.column("f4").to_numpy().copy()
    values[[0, 40]] = np.inf  # a control row and a treatment row
    frame = frame.set_column(frame.schema.get_field_index("f4"), "f4", pa.array(values, pa.float32()))
    pq.write_table(frame, path)
    return table_id


def test_stored_table_with_infinities_is_refused_by_every_endpoint(
    serve: Callable[..., httpx.Client], tmp_path: Path
) -> None:
    client = serve()
    bad = _stored_with_infinity(client, tmp_path / "data")
    good = _upload(client, synthetic_profiles(seed=1))
    transform = client.post("/v1/transforms", json={"table_id": good, "controls": CONTROLS, "lambda": 0.1})
    library = client.post("/v1/libraries", json={"table_id": good, "id_column": ID, "annotations": [MOA]})
    assert transform.status_code == 201 and library.status_code == 201
    before = _listing(client)
    answers = {
        "fit": client.post("/v1/transforms", json={"table_id": bad, "controls": CONTROLS, "lambda": 0.1}),
        "apply": client.post(f"/v1/transforms/{transform.json()['id']}/apply", json={"table_id": bad}),
        "library": client.post("/v1/libraries", json={"table_id": bad, "id_column": ID}),
        "match": client.post(f"/v1/libraries/{library.json()['id']}/match", json={"table_id": bad, "top_k": 1}),
        "evaluate": client.post("/v1/evaluate", json={"table_id": bad, "id_column": ID, "annotation": MOA}),
    }
    for what, response in answers.items():
        assert response.status_code == 422, (what, response.text)
        problem(response, 422, "input_error", "f4", "finite")
    assert _listing(client) == before


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e39", "-3.5e38", "1e400"])
def test_inline_match_queries_must_be_finite_float32(client: httpx.Client, value: str) -> None:
    table = _upload(client, synthetic_profiles())
    library = client.post("/v1/libraries", json={"table_id": table, "id_column": ID}).json()["id"]
    row = ["0.5"] * 11 + [value]
    body = f'{{"profiles": {{"features": [[{", ".join(["1.0"] * 12)}], [{", ".join(row)}]]}}, "top_k": 1}}'
    response = client.post(
        f"/v1/libraries/{library}/match", content=body, headers={"content-type": "application/json"}
    )
    problem(response, 422, "input_error", "finite")
    assert "row 1" in response.json()["detail"] or "profiles.features" in response.json()["detail"]


def test_inline_match_accepts_float32_extremes(client: httpx.Client) -> None:
    table = _upload(client, synthetic_profiles())
    library = client.post("/v1/libraries", json={"table_id": table, "id_column": ID}).json()["id"]
    big = float(np.finfo(np.float32).max)
    response = client.post(f"/v1/libraries/{library}/match",
                           json={"profiles": {"features": [[big] + [0.0] * 11, [1e-45] * 12]}, "top_k": 1})
    assert response.status_code == 200, response.text
    assert all(np.isfinite(m["score"]) for m in response.json()["matches"])


def test_domain_functions_reject_infinities() -> None:
    profiles = synthetic_profiles()
    profiles.loc[[0, 40], "f4"] = np.inf
    with pytest.raises(InputError, match="f4"):
        fit_sphering(profiles, controls=CONTROLS, lam=0.1)
    with pytest.raises(InputError, match="f4"):
        Library.from_profiles(profiles, id_col=ID)
    with pytest.raises(InputError, match="f4"):
        evaluate_retrieval(profiles, id_col=ID, annotation=MOA)
    clean = synthetic_profiles()
    sphering = fit_sphering(clean, controls=CONTROLS, lam=0.1)
    with pytest.raises(InputError, match="f4"):
        sphering.apply(profiles)
    library = Library.from_profiles(clean, id_col=ID)
    with pytest.raises(InputError, match="f4"):
        library.match(profiles, k=1)



def test_the_store_never_writes_a_table_with_infinities(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path / "data")
    profiles = synthetic_profiles()
    profiles.loc[3, "f7"] = -np.inf
    table_id = artifact_id("table", b"inf")
    with pytest.raises(InputError, match="f7"):
        store.put_table(profiles, table_id, name="derived", provenance={})
    assert not store.has_table(table_id) and store.tables() == []

"""The profiles SDK: request shapes, retries and typed errors on a mock transport; the real app end to end."""

from __future__ import annotations

import asyncio
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from _profiles_data import LINCS, LINCS_CONTROLS, LINCS_ID, LINCS_MOA, synthetic_profiles

from cpcnn import client as sdk
from cpcnn.client import AsyncClient, Client, NotFoundError, RetryPolicy
from cpcnn.errors import InputError
from cpcnn.metrics import evaluate_retrieval
from cpcnn.profiles import Library, fit_sphering, read_profiles

FAST = RetryPolicy(attempts=3, backoff_s=0.001, max_backoff_s=0.01)
ID, MOA, CONTROLS = "Metadata_broad_sample", "Metadata_moa", "Metadata_broad_sample=DMSO"
TABLE_ID, LIBRARY_ID = "a" * 32, "b" * 32
FEATURES = [f"f{j}" for j in range(12)]


def _table(table_id: str = TABLE_ID) -> dict[str, Any]:
    return {
        "id": table_id,
        "name": "t",
        "n_rows": 2,
        "n_features": 1,
        "metadata_columns": ["Metadata_x"],
        "feature_names": ["f0"],
        "created_at": datetime.now(UTC).isoformat(),
        "provenance": {},
    }


def _transform() -> dict[str, Any]:
    return {
        "id": "c" * 32,
        "table_id": TABLE_ID,
        "method": "zca",
        "lambda": 0.1,
        "controls": CONTROLS,
        "n_controls": 2,
        "n_features": 1,
        "rank": 1,
        "rank_deficient": False,
        "warnings": [],
        "feature_names": ["f0"],
        "created_at": datetime.now(UTC).isoformat(),
        "provenance": {},
    }


def _matches() -> dict[str, Any]:
    return {
        "library": LIBRARY_ID,
        "n_queries": 1,
        "top_k": 2,
        "matches": [
            {"query_id": "q", "rank": 1, "library_id": "x", "score": 0.9, "annotations": {MOA: "m"}},
            {"query_id": "q", "rank": 2, "library_id": 7, "score": 0.5, "annotations": {MOA: None}},
        ],
    }


def _client(handler: Any) -> Client:
    return Client("http://cpcnn.test", transport=httpx.MockTransport(handler), retry=FAST)


def test_upload_dataframe_sends_parquet_and_features() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json=_table())

    with _client(handler) as client:
        table = client.upload_table(synthetic_profiles(), features=["f0", "f1"], name="plate 1")
    assert table.id == TABLE_ID
    body = seen[0].content
    assert (
        seen[0].url.path == "/v1/tables"
        and b'name="file"; filename="table.parquet"' in body
        and b"PAR1" in body
    )
    assert body.count(b'name="features"') == 2 and b"plate 1" in body


def test_fit_sphering_uploads_unless_given_an_id(tmp_path: Path) -> None:
    seen: list[tuple[str, bytes]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, request.content))
        return httpx.Response(201, json=_table() if request.url.path == "/v1/tables" else _transform())

    path = tmp_path / "t.csv"
    synthetic_profiles().to_csv(path, index=False)
    with _client(handler) as client:
        assert client.fit_sphering(str(path), controls=CONTROLS, lam=0.1).lam == 0.1
        client.fit_sphering(TABLE_ID, controls=CONTROLS, lam=0.2, method="zca-cor")
    assert [p for p, _ in seen] == ["/v1/tables", "/v1/transforms", "/v1/transforms"]
    assert b'filename="t.csv"' in seen[0][1]
    assert json.loads(seen[2][1]) == {
        "table_id": TABLE_ID,
        "controls": CONTROLS,
        "lambda": 0.2,
        "method": "zca-cor",
    }


def test_match_retries_then_returns_a_long_table() -> None:
    bodies: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        if len(bodies) == 1:
            return httpx.Response(
                503, json={"title": "t", "status": 503, "detail": "busy", "code": "unavailable"}
            )
        return httpx.Response(200, json=_matches())

    with _client(handler) as client:
        frame = client.match(
            LIBRARY_ID, {"features": np.ones((1, 3)), "ids": ["q"]}, top_k=2, leave_one_out=True
        )
        assert list(frame.columns) == ["query_id", "rank", "library_id", "score", MOA]
        assert frame["library_id"].tolist() == ["x", 7] and frame[MOA].isna().tolist() == [False, True]
        client.match(LIBRARY_ID, np.zeros((2, 3)), top_k=1)
        rows = client.match(LIBRARY_ID, TABLE_ID, id_col="Metadata_x")
    assert len(bodies) == 4 and bodies[0] == bodies[1]
    assert bodies[1] == {
        "top_k": 2,
        "leave_one_out": True,
        "profiles": {"features": [[1.0, 1.0, 1.0]], "ids": ["q"]},
    }
    assert bodies[2]["profiles"] == {"features": [[0.0] * 3, [0.0] * 3]}
    assert bodies[3] == {"top_k": 10, "leave_one_out": False, "table_id": TABLE_ID, "id_column": "Metadata_x"}
    assert rows.iloc[0].to_dict() == {"query_id": "q", "rank": 1, "library_id": "x", "score": 0.9, MOA: "m"}


def test_typed_errors_and_local_validation(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/v1/libraries"):
            return httpx.Response(
                404,
                json={
                    "title": "Not found",
                    "status": 404,
                    "detail": "library x does not exist",
                    "code": "not_found",
                },
            )
        if request.url.path.endswith("/data"):
            buffer = io.BytesIO()
            pd.DataFrame({"Metadata_x": ["a"], "f0": np.float32([1.5])}).to_parquet(buffer)
            return httpx.Response(200, content=buffer.getvalue())
        return httpx.Response(
            422,
            json={
                "title": "Invalid input",
                "status": 422,
                "code": "input_error",
                "detail": "no control rows with Metadata_x == 'DMSO'",
            },
        )

    with _client(handler) as client:
        with pytest.raises(sdk.InputError, match="no control rows") as info:
            client.fit_sphering(TABLE_ID, controls="Metadata_x=DMSO", lam=1)
        assert isinstance(info.value, InputError) and info.value.status_code == 422
        with pytest.raises(NotFoundError, match="does not exist"):
            client.get_library("x")
        with pytest.raises(InputError, match="does not exist"):
            client.upload_table(str(tmp_path / "missing.csv"))
        with pytest.raises(InputError, match="cannot upload"):
            client.upload_table(3.5)
        with pytest.raises(InputError, match="non-empty"):
            client.match(LIBRARY_ID, np.zeros(3))
        columns = client.download_table(TABLE_ID)
    assert isinstance(columns, pd.DataFrame) and columns["f0"].tolist() == [1.5] and columns["f0"].dtype == np.float32


def _check_flow(
    table: pd.DataFrame,
    transform: Any,
    sphered: pd.DataFrame,
    library: Any,
    matches: pd.DataFrame,
    metrics: dict[str, Any],
    *,
    controls: str,
    lam: float,
    id_col: str,
    annotation: str,
) -> None:
    sphering = fit_sphering(table, controls=controls, lam=lam)
    expected = sphering.apply(table)
    assert transform.n_controls == sphering.n_controls and transform.feature_names == list(sphering.features)
    names = list(sphering.features)
    np.testing.assert_array_equal(sphered[names].to_numpy(), expected[names].to_numpy())
    local = Library.from_profiles(expected, id_col=id_col, annotations=[annotation])
    assert library.n_profiles == len(local)
    reference = local.match(expected, k=3, leave_one_out=True)
    assert matches["library_id"].tolist() == reference["library_id"].tolist()
    np.testing.assert_allclose(matches["score"].to_numpy(), reference["score"].to_numpy(), rtol=1e-6)
    assert metrics.pop("table_id")
    assert metrics == evaluate_retrieval(expected, id_col=id_col, annotation=annotation).to_dict()


def test_live_flow_with_dataframes(server_url: str) -> None:
    table = synthetic_profiles(seed=4)
    with Client(server_url) as client:
        transform = client.fit_sphering(table, controls=CONTROLS, lam=1e-2)
        sphered_table = client.sphere_table(transform, table)
        sphered = client.apply_sphering(transform.id, table)
        assert client.get_table(sphered_table).provenance["transform_id"] == transform.id
        library = client.create_library(sphered_table.id, id_col=ID, annotations=[MOA])
        matches = client.match(library, sphered, top_k=3, leave_one_out=True)
        metrics = client.evaluate(sphered_table, id_col=ID, annotation=MOA)
        _check_flow(
            table,
            transform,
            sphered,
            library,
            matches,
            metrics,
            controls=CONTROLS,
            lam=1e-2,
            id_col=ID,
            annotation=MOA,
        )
        inline = client.match(
            library,
            {"features": sphered[FEATURES].to_numpy()[:2], "ids": ["cmp-0-0", "x"]},
            top_k=1,
            leave_one_out=True,
        )
        assert inline["query_id"].tolist() == ["cmp-0-0", "x"] and inline["library_id"][0] != "cmp-0-0"
        assert transform.id in {t.id for t in client.transforms()} and library.id in {
            x.id for x in client.libraries()
        }
        assert client.get_transform(transform.id) == transform
        with pytest.raises(sdk.InputError, match="feature mismatch"):
            client.match(library, synthetic_profiles(n_features=3))
        client.delete_library(library)
        client.delete_transform(transform.id)
        client.delete_table(sphered_table)
        with pytest.raises(NotFoundError):
            client.get_library(library.id)
        with pytest.raises(NotFoundError):
            client.delete_transform(transform.id)
        assert sphered_table.id not in {t.id for t in client.tables()}


@pytest.mark.skipif(not LINCS.is_file(), reason="LINCS plate (../shared) not present")
def test_live_lincs_plate_from_a_path(server_url: str) -> None:
    with Client(server_url) as client:
        uploaded = client.upload_table(LINCS)
        transform = client.fit_sphering(uploaded, controls=LINCS_CONTROLS, lam=1e-2)
        assert transform.rank_deficient and transform.n_features == 454
        sphered = client.apply_sphering(transform, uploaded)
        library = client.create_library(
            client.sphere_table(transform, uploaded), id_col=LINCS_ID, annotations=[LINCS_MOA]
        )
        matches = client.match(library, sphered, top_k=3, leave_one_out=True)
        metrics = client.evaluate(
            client.sphere_table(transform, uploaded), id_col=LINCS_ID, annotation=LINCS_MOA
        )
    _check_flow(
        read_profiles(LINCS),
        transform,
        sphered,
        library,
        matches,
        metrics,
        controls=LINCS_CONTROLS,
        lam=1e-2,
        id_col=LINCS_ID,
        annotation=LINCS_MOA,
    )


def test_async_client_on_the_asgi_app(tmp_path: Path) -> None:
    from cpcnn.service.app.main import create_app
    from cpcnn.service.config import ApiSettings

    app = create_app(ApiSettings(env="dev", data_dir=tmp_path / "data", models_dir=tmp_path / "models",
                                 trusted_hosts=["cpcnn.test"]))
    table = synthetic_profiles(seed=5)

    async def run() -> tuple[Any, ...]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with AsyncClient("http://cpcnn.test", transport=transport, retry=FAST) as client:
                transform = await client.fit_sphering(table, controls=CONTROLS, lam=1e-2)
                sphered = await client.apply_sphering(transform, table)
                library = await client.create_library(
                    await client.sphere_table(transform, table), id_col=ID, annotations=[MOA]
                )
                matches = await client.match(library.id, sphered, top_k=3, leave_one_out=True)
                metrics = await client.evaluate(
                    await client.sphere_table(transform, table), id_col=ID, annotation=MOA
                )
                assert [t.id for t in await client.transforms()] == [transform.id]
                with pytest.raises(sdk.InputError, match="lambda"):
                    await client.fit_sphering(table, controls=CONTROLS, lam=0)
                await client.delete_library(library)
                assert await client.libraries() == []
                return transform, sphered, library, matches, metrics

    transform, sphered, library, matches, metrics = asyncio.run(run())
    _check_flow(
        table,
        transform,
        sphered,
        library,
        matches,
        metrics,
        controls=CONTROLS,
        lam=1e-2,
        id_col=ID,
        annotation=MOA,
    )


def test_features_selection_is_sent_where_a_table_is_read() -> None:
    seen: list[tuple[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        seen.append((request.url.path, body))
        if request.url.path.endswith("/match"):
            return httpx.Response(200, json={"library": LIBRARY_ID, "n_queries": 0, "top_k": 1, "matches": []})
        if request.url.path == "/v1/evaluate":
            return httpx.Response(422, json={"title": "x", "status": 422, "detail": "stop here"})
        if request.url.path == "/v1/libraries":
            return httpx.Response(201, json={**_table(LIBRARY_ID), "table_id": TABLE_ID, "id_column": ID,
                                             "annotation_columns": [], "n_profiles": 1})
        return httpx.Response(201, json=_transform() if request.url.path == "/v1/transforms" else _table())

    with _client(handler) as client:
        client.fit_sphering(TABLE_ID, controls=CONTROLS, lam=0.1, features="efficientnet_*")
        client.sphere_table("c" * 32, TABLE_ID, features=["f0", "f1"])
        client.create_library(TABLE_ID, id_col=ID, features="f0,f1")
        client.match(LIBRARY_ID, TABLE_ID, top_k=1, features=["f*"])
        with pytest.raises(sdk.InputError, match="stop here"):
            client.evaluate(TABLE_ID, id_col=ID, annotation=MOA, features=["f*"])
        client.fit_sphering(TABLE_ID, controls=CONTROLS, lam=0.1)
    sent = [body.get("features") for _, body in seen]
    assert sent == [["efficientnet_*"], ["f0", "f1"], ["f0,f1"], ["f*"], ["f*"], None]


def test_async_features_on_the_asgi_app(tmp_path: Path) -> None:
    from cpcnn.service.app.main import create_app
    from cpcnn.service.config import ApiSettings

    app = create_app(ApiSettings(env="dev", data_dir=tmp_path / "data", models_dir=tmp_path / "models",
                                 trusted_hosts=["cpcnn.test"]))
    table = synthetic_profiles(seed=6).assign(extra=np.float32(1.5))  # numeric, but not a feature we want

    async def run() -> tuple[Any, ...]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with AsyncClient("http://cpcnn.test", transport=transport, retry=FAST) as client:
                transform = await client.fit_sphering(table, controls=CONTROLS, lam=1e-2, features="f*")
                sphered = await client.apply_sphering(transform, table, features="f*")
                metrics = await client.evaluate(table, id_col=ID, annotation=MOA, features=FEATURES)
                return transform, sphered, metrics

    transform, sphered, metrics = asyncio.run(run())
    assert transform.feature_names == FEATURES
    assert [c for c in sphered.columns if not c.startswith("Metadata_")] == FEATURES
    expected = evaluate_retrieval(table, id_col=ID, annotation=MOA, features=FEATURES)
    assert metrics["mean_average_precision"] == pytest.approx(expected.mean_average_precision, rel=1e-5)


def test_evaluate_sends_the_convention(tmp_path: Path) -> None:
    """Sync: the request carries ``convention``; async: the real app answers with that convention."""
    from cpcnn.service.app.main import create_app
    from cpcnn.service.config import ApiSettings

    bodies: list[Any] = []
    table = synthetic_profiles(seed=6)
    answer = evaluate_retrieval(table, id_col=ID, annotation=MOA, convention="paper").to_dict()

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json=answer | {"table_id": TABLE_ID})

    with _client(handler) as client:
        metrics = client.evaluate(TABLE_ID, id_col=ID, annotation=MOA, convention="paper")
        client.evaluate(TABLE_ID, id_col=ID, annotation=MOA)
    assert [b["convention"] for b in bodies] == ["paper", "copairs"] and metrics["convention"] == "paper"

    app = create_app(ApiSettings(env="dev", data_dir=tmp_path / "data", models_dir=tmp_path / "models",
                                 trusted_hosts=["cpcnn.test"]))

    async def run() -> dict[str, Any]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with AsyncClient("http://cpcnn.test", transport=transport, retry=FAST) as client:
                return await client.evaluate(table, id_col=ID, annotation=MOA, convention="paper")

    served = asyncio.run(run())
    assert served.pop("table_id") and served == answer

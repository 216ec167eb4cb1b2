"""Bad profile input is a 4xx problem naming the problem, never a 500, and never costs a stored artifact."""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from _profiles_data import synthetic_profiles
from _servers import live_server
from cpcnn.service.app.main import create_app
from cpcnn.service.config import ApiSettings, Limits

ID, MOA, CONTROLS = "Metadata_broad_sample", "Metadata_moa", "Metadata_broad_sample=DMSO"
MISSING = "0" * 32


def _problem(response: httpx.Response, status: int, code: str, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["code"] == code
    for word in words:
        assert word in body["detail"], body["detail"]
    return body


def _parquet(table: Any) -> bytes:
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    return buffer.getvalue()


def _upload(client: httpx.Client, data: bytes, filename: str = "t.parquet", **fields: Any) -> httpx.Response:
    return client.post(
        "/v1/tables", files={"file": (filename, data, "application/octet-stream")}, data=fields
    )


@pytest.fixture
def stocked(make_settings: Callable[..., ApiSettings]) -> Iterator[tuple[httpx.Client, dict[str, str]]]:
    """A server holding one table, transform, sphered table and library; the test checks they all survive."""
    limits = Limits(
        max_upload_bytes=400_000,
        max_part_bytes=300_000,
        max_table_bytes=200_000,
        max_table_values=20_000,
        max_matches=100,
    )
    with live_server(create_app(make_settings(limits=limits))) as url, httpx.Client(base_url=url) as client:
        table = _upload(client, _parquet(synthetic_profiles())).json()["id"]
        transform = client.post(
            "/v1/transforms", json={"table_id": table, "controls": CONTROLS, "lambda": 0.1}
        ).json()
        sphered = client.post(f"/v1/transforms/{transform['id']}/apply", json={"table_id": table}).json()[
            "id"
        ]
        library = client.post(
            "/v1/libraries", json={"table_id": sphered, "id_column": ID, "annotations": [MOA]}
        ).json()
        ids = {"table": table, "transform": transform["id"], "sphered": sphered, "library": library["id"]}
        before = {kind: client.get(f"/v1/{kind}").json() for kind in ("tables", "transforms", "libraries")}
        data = client.get(f"/v1/tables/{sphered}/data").content
        yield client, ids
        assert {
            kind: client.get(f"/v1/{kind}").json() for kind in ("tables", "transforms", "libraries")
        } == before
        assert client.get(f"/v1/tables/{sphered}/data").content == data
        match = client.post(f"/v1/libraries/{ids['library']}/match", json={"table_id": sphered, "top_k": 1})
        assert match.status_code == 200


def test_bad_table_bytes(stocked: tuple[httpx.Client, dict[str, str]]) -> None:
    client, _ = stocked
    table = synthetic_profiles()
    good_gz = gzip.compress(table.to_csv(index=False).encode())
    _problem(_upload(client, b"\x00\x01\x02binary junk", "t.bin"), 415, "unsupported_media", "binary")
    _problem(_upload(client, b"\xff\xfe\xfa not utf-8", "t.csv"), 415, "unsupported_media", "UTF-8")
    _problem(_upload(client, b"a,b\n1,2\n", "t.parquet"), 415, "unsupported_media", "not a Parquet file")
    _problem(_upload(client, b"PAR1 but not really", "t.parquet"), 415, "unsupported_media", "Parquet")
    _problem(_upload(client, good_gz[: len(good_gz) // 2], "t.csv.gz"), 415, "unsupported_media", "gzip")
    _problem(_upload(client, b"a,b\n1,2\n", "t.csv.gz"), 415, "unsupported_media", "gzip")
    _problem(_upload(client, b"", "t.csv"), 422, "input_error", "empty")
    _problem(_upload(client, b"Metadata_x,f0\n", "t.csv"), 422, "input_error", "no rows")
    _problem(
        _upload(client, b"Metadata_x,f0,label\na,1,x\n", "t.csv", features="f0,label"),
        422,
        "input_error",
        "non-numeric",
        "label",
    )
    text_column = _upload(client, b"Metadata_x,f0,label\na,1,x\n", "t.csv")  # not a feature by default
    assert text_column.status_code == 201 and text_column.json()["feature_names"] == ["f0"]
    assert client.delete(f"/v1/tables/{text_column.json()['id']}").status_code == 204
    _problem(_upload(client, b"Metadata_x\na\n", "t.csv"), 422, "input_error", "no feature columns")
    _problem(_upload(client, b"Metadata_x,f0\na,inf\n", "t.csv"), 422, "input_error", "infinite", "f0")
    _problem(_upload(client, b"Metadata_x,f0\na,1\n", "t.csv", features="f9"), 422, "input_error", "f9")
    _problem(
        _upload(client, b"Metadata_x,f0\na,1\n", "t.csv", features="Metadata_x"),
        422,
        "input_error",
        "cannot be features",
    )
    _problem(client.post("/v1/tables", json={"file": "x"}), 415, "unsupported_media", "multipart/form-data")
    _problem(client.post("/v1/tables", files={"table": ("t.csv", b"a\n1\n")}), 422, "input_error", "table")
    _problem(
        client.post("/v1/tables", data={"name": "x"}, files={"features": (None, "f0")}),
        422,
        "input_error",
        "no table",
    )


def test_oversize_tables(stocked: tuple[httpx.Client, dict[str, str]]) -> None:
    client, _ = stocked
    _problem(_upload(client, b"x" * 500_000, "t.csv"), 413, "payload_too_large", "over the limit")
    _problem(_upload(client, b"x" * 350_000, "t.csv"), 413, "payload_too_large", "part file")
    bomb = gzip.compress(b"Metadata_x,f0\n" + b"a,1\n" * 100_000)
    _problem(_upload(client, bomb, "t.csv.gz"), 413, "payload_too_large", "decompresses")
    wide = synthetic_profiles(n_features=200, n_controls=100)
    _problem(_upload(client, _parquet(wide)), 413, "payload_too_large", "values")


def test_bad_sphering_requests(stocked: tuple[httpx.Client, dict[str, str]]) -> None:
    client, ids = stocked

    def fit(**body: Any) -> httpx.Response:
        return client.post(
            "/v1/transforms", json={"table_id": ids["table"], "controls": CONTROLS, "lambda": 0.1} | body
        )

    _problem(fit(controls="Metadata_broad_sample=water"), 422, "input_error", "no control rows", "water")
    _problem(fit(controls="Metadata_nope=DMSO"), 422, "input_error", "Metadata_nope")
    _problem(fit(controls="DMSO"), 422, "input_error", "COLUMN=VALUE")
    _problem(fit(**{"lambda": 0}), 422, "input_error", "lambda", "greater than 0")
    _problem(fit(**{"lambda": -1}), 422, "input_error", "lambda")
    _problem(fit(method="pca"), 422, "input_error", "method")
    _problem(fit(table_id=ids["library"]), 404, "not_found", "table")
    _problem(fit(table_id="../../etc"), 404, "not_found", "hexadecimal")
    _problem(fit(extra=1), 422, "input_error", "extra")
    nan = synthetic_profiles()
    nan["f3"] = np.nan
    nan_id = _upload(client, _parquet(nan)).json()["id"]
    _problem(fit(table_id=nan_id), 422, "input_error", "only NaN", "f3")
    other = _upload(client, _parquet(synthetic_profiles(n_features=5))).json()["id"]
    apply = client.post(f"/v1/transforms/{ids['transform']}/apply", json={"table_id": other})
    _problem(apply, 422, "input_error", "feature mismatch", "missing 7")
    _problem(
        client.post(f"/v1/transforms/{MISSING}/apply", json={"table_id": other}),
        404,
        "not_found",
        "transform",
    )
    _problem(
        client.post(f"/v1/transforms/{ids['transform']}/apply", json={"table_id": MISSING}), 404, "not_found"
    )
    for kind in (nan_id, other):
        assert client.delete(f"/v1/tables/{kind}").status_code == 204


def test_bad_library_and_match_requests(stocked: tuple[httpx.Client, dict[str, str]]) -> None:
    client, ids = stocked
    library = ids["library"]

    def create(**body: Any) -> httpx.Response:
        return client.post("/v1/libraries", json={"table_id": ids["table"], "id_column": ID} | body)

    def match(**body: Any) -> httpx.Response:
        return client.post(f"/v1/libraries/{library}/match", json=body)

    _problem(create(id_column="Metadata_nope"), 422, "input_error", "Metadata_nope")
    _problem(create(annotations=["Metadata_gone"]), 422, "input_error", "Metadata_gone")
    _problem(create(id_column="f0"), 422, "input_error", "f0", "feature column")
    _problem(create(table_id=MISSING), 404, "not_found", "table")
    _problem(match(), 422, "input_error", "exactly one")
    _problem(
        match(table_id=ids["table"], profiles={"features": [[0.0] * 12]}), 422, "input_error", "exactly one"
    )
    _problem(match(profiles={"features": [[0.0] * 5]}), 422, "input_error", "feature mismatch", "12")
    _problem(match(profiles={"features": [[0.0] * 12, [0.0] * 11]}), 422, "input_error", "differ in length")
    _problem(match(profiles={"features": [[0.0] * 12], "ids": ["a", "b"]}), 422, "input_error", "2 ids")
    _problem(
        match(profiles={"features": [[0.0] * 12]}, leave_one_out=True), 422, "input_error", "leave-one-out"
    )
    _problem(
        match(table_id=ids["table"], id_column="Metadata_nope", top_k=1), 422, "input_error", "Metadata_nope"
    )
    _problem(match(table_id=ids["table"], top_k=0), 422, "input_error", "top_k")
    _problem(match(table_id=ids["table"], top_k=5), 422, "input_error", "over the limit of 100")
    other = _upload(client, _parquet(synthetic_profiles(n_features=5))).json()["id"]
    _problem(match(table_id=other, top_k=1), 422, "input_error", "feature mismatch with the library")
    _problem(match(table_id=MISSING), 404, "not_found", "table")
    _problem(
        client.post(f"/v1/libraries/{MISSING}/match", json={"table_id": ids["table"]}),
        404,
        "not_found",
        "library",
    )
    assert client.delete(f"/v1/tables/{other}").status_code == 204


def test_degenerate_evaluations(stocked: tuple[httpx.Client, dict[str, str]]) -> None:
    client, ids = stocked

    def evaluate(table_id: str, **body: Any) -> httpx.Response:
        return client.post(
            "/v1/evaluate", json={"table_id": table_id, "id_column": ID, "annotation": MOA} | body
        )

    single = synthetic_profiles(n_moas=1, per_moa=1, n_controls=3)
    single_id = _upload(client, _parquet(single)).json()["id"]
    _problem(evaluate(single_id), 422, "input_error", "nothing to evaluate", "1 annotated treatment")
    distinct = synthetic_profiles(n_moas=4, per_moa=1, n_controls=3)
    distinct_id = _upload(client, _parquet(distinct)).json()["id"]
    _problem(evaluate(distinct_id), 422, "input_error", "nothing to evaluate", "share")
    _problem(evaluate(ids["table"], annotation="Metadata_nope"), 422, "input_error", "Metadata_nope")
    _problem(evaluate(MISSING), 404, "not_found", "table")
    assert evaluate(ids["table"], separator=None).status_code == 200
    for table_id in (single_id, distinct_id):
        assert client.delete(f"/v1/tables/{table_id}").status_code == 204


@pytest.mark.parametrize("kind", ["tables", "transforms", "libraries"])
def test_unknown_ids_are_404(stocked: tuple[httpx.Client, dict[str, str]], kind: str) -> None:
    client, _ = stocked
    for bad in (MISSING, "nope", "..%2F..%2Fetc"):
        _problem(client.get(f"/v1/{kind}/{bad}"), 404, "not_found")
        _problem(client.delete(f"/v1/{kind}/{bad}"), 404, "not_found")
    if kind == "tables":
        _problem(client.get(f"/v1/tables/{MISSING}/data"), 404, "not_found", "table")

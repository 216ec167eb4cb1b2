"""Generated hostile requests to the upload and table endpoints never get a 5xx.

schemathesis generates requests from the committed contract; the body strategies of the multipart and
profile endpoints are widened with the classes of input that once gave 500s or were misread: deeply
nested or enormous-number locations JSON, rows of the wrong length, channel orders thousands of names
long, CSV tables with infinities, ragged rows or duplicate columns, a feature column used as an
annotation or id, lambdas that underflow.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import schemathesis
from _http_fixtures import API_KEY, start_server  # noqa: F401
from _servers import stop_process
from _tiny_model import tiff_bytes
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

CONTRACT = Path(__file__).resolve().parents[2] / "openapi" / "openapi.json"
TARGETS = r"^/v1/(jobs|crops/preview|tables|transforms|evaluate|libraries/\{library_id\}/match)$"

#: Table ids uploaded by the fixture (content hashes), for the bodies that refer to a table.
TABLES: dict[str, str] = {}
#: A library built from the good table, so matching reaches real data.
LIBRARIES: list[str] = []
FEATURES = ("f_0", "f_1", "f_2")


def _csv(rows: list[list[Any]], header: list[str]) -> bytes:
    return ("\n".join([",".join(header)] + [",".join(map(str, row)) for row in rows]) + "\n").encode()


def _table_frames() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    header = ["Metadata_id", "Metadata_moa", "Metadata_ctrl", *FEATURES]
    rows = [[f"t{i % 6}", f"m{i % 3}", "1" if i < 8 else "0", *rng.standard_normal(3).round(4)] for i in range(24)]
    infinite = [row[:3] + ["inf", row[4], "-inf"] for row in rows]
    return {"good": _csv(rows, header), "infinite": _csv(infinite, header)}


def _locations() -> st.SearchStrategy[bytes | str]:
    depth = st.integers(min_value=1, max_value=200_000)
    return st.one_of(
        depth.map(lambda n: "[" * n + "]" * n),                          # nested far past any parser's stack
        depth.map(lambda n: "[" * n),                                    # and never closed
        st.integers(1, 20_000).map(lambda n: f"[[1, 2], [{'9' * n}, 5]]"),  # int() of thousands of digits
        st.just("[[10,20,30],[40,50,60]]"),                              # rows of three
        st.just('{"x":"123","y":"456"}'),                                # strings where numbers belong
        st.just('{"x":[1,2],"y":[3]}'),
        st.just("[[NaN, 1], [Infinity, 2]]"),
        st.just("[[1e400, 1]]"),
        st.just("Nuclei_Location_Center_X,Nuclei_Location_Center_Y\n1,2,3\n4\n"),
        st.binary(max_size=256),
        st.text(max_size=64),
    )


def _job_parts(body: Any) -> st.SearchStrategy[Any]:
    plane = tiff_bytes(np.full((64, 64), 100, np.uint16))
    channels = {name: plane for name in ("DNA", "RNA", "ER", "AGP", "Mito")}
    stack_order = st.integers(1, 5000).map(lambda n: ",".join(["DNA", "RNA", "ER", "AGP", "Mito"] + [f"c{i}" for i in range(n)]))
    hostile = st.fixed_dictionaries({}, optional={
        "locations": _locations(), "channel_order": stack_order, "detect_nuclei": st.sampled_from(["true", "false"]),
        "image": st.just(plane), "model": st.sampled_from(["cnn1", "cnn1\n", "../cnn1", "x" * 300]),
    })
    base = body if isinstance(body, dict) else {}
    return st.tuples(st.booleans(), hostile).map(lambda pair: {**base, **(channels if pair[0] else {}), **pair[1]})


def _table_upload(body: Any) -> st.SearchStrategy[Any]:
    good = _table_frames()["good"]
    files = st.one_of(
        st.just(_table_frames()["infinite"]),
        st.just(b"a,a,b\n1,2,3\n"),                                          # duplicate names
        st.just(b"Metadata_x,f_0,f_1\nq,1,2\nr,3\ns,4,5,6\n"),               # ragged rows
        st.just(gzip.compress(b"f_0,f_1\n" + b"1,2\n" * 1000)),
        st.just(gzip.compress(b"garbage")[:20]),                              # truncated gzip
        st.just(b"PAR1" + bytes(64) + b"PAR1"),                               # Parquet magic around junk
        st.just(b"Metadata_x\nq\n"),                                          # no features
        st.just(b"f_0,f_1\n" + b"1e999,-1e999\n"),
        st.binary(max_size=512),
        st.just(good),
    )
    features = st.one_of(st.just("f_0,f_1"), st.just("nope"), st.just("f_0,f_0"), st.text(max_size=20))
    base = body if isinstance(body, dict) else {}
    return st.fixed_dictionaries({"file": files}, optional={"features": features}).map(lambda extra: {**base, **extra})


def _table_ids() -> st.SearchStrategy[str]:
    return st.sampled_from(sorted(TABLES.values()) or ["0" * 32])


def _columns() -> st.SearchStrategy[str]:
    return st.sampled_from(["Metadata_id", "Metadata_moa", "Metadata_ctrl", *FEATURES, "missing", ""])


def _profile_body(path: str, body: Any) -> st.SearchStrategy[Any]:
    base = body if isinstance(body, dict) else {}
    if path == "/v1/transforms":
        extra = st.fixed_dictionaries({
            "table_id": _table_ids(),
            "controls": st.sampled_from(["Metadata_ctrl=1", "Metadata_ctrl=9", "f_0=1", "nonsense", "=", "Metadata_ctrl="]),
            "lambda": st.sampled_from([1e-320, 5e-324, 1e-2, 1e300, 1.7e308, 0.0, -1.0]),
        }, optional={"method": st.sampled_from(["zca", "zca-cor"])})
    elif path == "/v1/evaluate":
        extra = st.fixed_dictionaries({"table_id": _table_ids(), "id_column": _columns(), "annotation": _columns()},
                                      optional={"separator": st.sampled_from(["|", "", "m", "\n"])})
    else:  # match
        extra = st.fixed_dictionaries({"table_id": _table_ids()}, optional={
            "id_column": _columns(), "top_k": st.sampled_from([0, 1, 5, 10**9]),
            "leave_one_out": st.booleans(),
        })
    return extra.map(lambda fields: {**base, **fields})


schema = schemathesis.openapi.from_path(CONTRACT).include(path_regex=TARGETS, method="POST")


@schema.hook
def flatmap_body(context: Any, body: Any) -> st.SearchStrategy[Any]:
    path = context.operation.path
    if path == "/v1/jobs":
        return _job_parts(body)
    if path == "/v1/crops/preview":
        cells = st.sampled_from(["", "0", "0,1", "999", "-1", "1,,1", "9" * 40, ",".join(map(str, range(20)))])
        return st.tuples(_job_parts(body), cells).map(lambda pair: {**pair[0], "cells": pair[1]})
    if path == "/v1/tables":
        return _table_upload(body)
    return _profile_body(path, body)


@schema.hook
def map_path_parameters(context: Any, path_parameters: dict[str, Any]) -> dict[str, Any]:
    if path_parameters and "library_id" in path_parameters and LIBRARIES:
        return {**path_parameters, "library_id": LIBRARIES[0]}
    return path_parameters


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``cpcnn serve`` with small limits, a stored table (and its infinite twin) and a library."""
    server = start_server(tmp_path_factory.mktemp("fuzz"), env={
        "CPCNN_LIMITS__MAX_UPLOAD_BYTES": "4000000", "CPCNN_LIMITS__MAX_PIXELS": "1000000",
        "CPCNN_LIMITS__MAX_CELLS": "1000",
    })
    try:
        with httpx.Client(base_url=server.url, headers={"X-API-Key": API_KEY}, timeout=60) as client:
            for name, data in _table_frames().items():
                response = client.post("/v1/tables", files={"file": (f"{name}.csv", data)})
                assert response.status_code in ((201,) if name == "good" else (201, 422)), response.text
                if response.status_code == 201:  # a table with infinities may be refused at upload
                    TABLES[name] = response.json()["id"]
            library = client.post("/v1/libraries", json={"table_id": TABLES["good"], "id_column": "Metadata_id",
                                                         "annotations": ["Metadata_moa"]})
            assert library.status_code == 201, library.text
            LIBRARIES.append(library.json()["id"])
        yield server.url
    finally:
        stop_process(server.process)


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_hostile_bodies_never_get_a_server_error(case: schemathesis.Case, base_url: str) -> None:
    if case.query and "wait" in case.query:
        case.query["wait"] = 0
    case.headers = {**(case.headers or {}), "X-API-Key": API_KEY}
    response = case.call(base_url=base_url, timeout=60)
    assert response.status_code < 500 or response.status_code == 503, (
        f"{case.method} {case.path} -> {response.status_code}: {response.text[:500]}\nbody: {_short(case.body)}"
    )


def _short(body: Any) -> str:
    if isinstance(body, dict):
        return repr({key: (value[:80] if isinstance(value, bytes | str) else value) for key, value in body.items()})
    return repr(body)[:300]


def test_hostile_examples_are_well_formed() -> None:
    """The widened strategies really produce the hostile classes (a fuzz test that sends nothing proves nothing)."""
    frames = _table_frames()
    assert b"inf" in frames["infinite"] and b"inf" not in frames["good"]
    import pandas as pd

    assert np.isinf(pd.read_csv(io.BytesIO(frames["infinite"]))[list(FEATURES)].to_numpy()).any()

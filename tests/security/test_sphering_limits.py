"""Sphering costs D^2 memory, D^3 time and an 8 D^2-byte file: the API caps D before reading any row,
and listing or describing transforms reads their metadata, never their (D, D) matrices."""

from __future__ import annotations

import io
from collections.abc import Callable

import _jobs_fixtures
import httpx
import numpy as np
import pandas as pd
import pytest
from _profiles_data import synthetic_profiles
from cpcnn.service.config import Limits

problem = _jobs_fixtures.problem
CONTROLS = "Metadata_broad_sample=DMSO"


def _upload(client: httpx.Client, table: pd.DataFrame) -> str:
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    response = client.post("/v1/tables", files={"file": ("t.parquet", buffer.getvalue(), "application/octet-stream")})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_fit_over_the_feature_limit_is_refused(serve: Callable[..., httpx.Client]) -> None:
    client = serve(limits=Limits(max_sphering_features=40))
    wide = _upload(client, synthetic_profiles(n_features=41))
    response = client.post("/v1/transforms", json={"table_id": wide, "controls": CONTROLS, "lambda": 0.1})
    problem(response, 413, "payload_too_large", "41 features", "limit of 40")
    assert client.get("/v1/transforms").json()["count"] == 0
    at_limit = _upload(client, synthetic_profiles(n_features=40))
    fitted = client.post("/v1/transforms", json={"table_id": at_limit, "controls": CONTROLS, "lambda": 0.1})
    assert fitted.status_code == 201, fitted.text


def test_the_limit_counts_the_selected_features(serve: Callable[..., httpx.Client]) -> None:
    client = serve(limits=Limits(max_sphering_features=40))
    wide = _upload(client, synthetic_profiles(n_features=60))
    body = {"table_id": wide, "controls": CONTROLS, "lambda": 0.1}
    selected = client.post("/v1/transforms", json=body | {"features": [f"f{j}" for j in range(40)]})
    assert selected.status_code == 201, selected.text
    assert len(selected.json()["feature_names"]) == 40
    problem(client.post("/v1/transforms", json=body | {"features": ["f*"]}), 413, "payload_too_large", "60 features")
    problem(client.post("/v1/transforms", json=body), 413, "payload_too_large", "60 features")


def test_the_default_limit_is_a_few_thousand_features() -> None:
    assert 1000 <= Limits().max_sphering_features <= 10_000


def test_listing_transforms_never_reads_their_matrices(
    serve: Callable[..., httpx.Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = serve()
    table = _upload(client, synthetic_profiles(n_features=30))
    ids = [client.post("/v1/transforms", json={"table_id": table, "controls": CONTROLS, "lambda": lam}).json()["id"]
           for lam in (0.1, 1.0)]
    read: list[str] = []
    real_getitem = np.lib.npyio.NpzFile.__getitem__

    def recording(self: np.lib.npyio.NpzFile, key: str) -> object:
        read.append(key)
        return real_getitem(self, key)

    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", recording)
    listing = client.get("/v1/transforms").json()
    assert listing["count"] == 2 and {t["id"] for t in listing["data"]} == set(ids)
    assert listing["data"][0]["n_features"] == 30 and len(listing["data"][0]["feature_names"]) == 30
    one = client.get(f"/v1/transforms/{ids[0]}").json()
    assert one["n_features"] == 30 and one["n_controls"] == 30 and one["rank"] == 29
    assert read and not {"matrix", "mean", "std"} & set(read), read
    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", real_getitem)
    applied = client.post(f"/v1/transforms/{ids[0]}/apply", json={"table_id": table})
    assert applied.status_code == 201, applied.text

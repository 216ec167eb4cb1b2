"""The committed contract matches the app, and generated requests never get a 5xx."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from _servers import REPO_ROOT, live_server
from _tiny_model import save_tiny_model
from cpcnn.service.app.main import create_app
from cpcnn.service.config import ApiSettings, Limits, WorkerTuning
from hypothesis import HealthCheck, settings

CONTRACT = REPO_ROOT / "openapi" / "openapi.json"


def test_committed_openapi_matches_the_app() -> None:
    result = subprocess.run([sys.executable, "scripts/export_openapi.py", "--check"], cwd=REPO_ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr + "\nregenerate with: python scripts/export_openapi.py"


def test_contract_shape() -> None:
    schema = json.loads(CONTRACT.read_text())
    operations = {op["operationId"] for path in schema["paths"].values() for op in path.values()}
    assert {"jobs-create_job", "jobs-get_job", "jobs-get_result", "jobs-delete_job", "models-list_models",
            "models-get_model", "health-healthz", "health-readyz", "health-metrics"} <= operations
    assert all(path.startswith("/v1/") or path in ("/healthz", "/readyz", "/metrics") for path in schema["paths"])
    post = schema["paths"]["/v1/jobs"]["post"]["responses"]
    assert post["413"]["content"]["application/problem+json"]["schema"]["$ref"] == "#/components/schemas/Problem"


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root: Path = tmp_path_factory.mktemp("schemathesis")
    save_tiny_model(root / "models")
    app_settings = ApiSettings(
        env="dev", data_dir=root / "data", models_dir=root / "models",
        limits=Limits(max_upload_bytes=2_000_000, max_pixels=1_000_000),
        worker=WorkerTuning(device="cpu", threads=1, slots=1),
    )
    with live_server(create_app(app_settings)) as url:
        yield url


schema = schemathesis.openapi.from_path(CONTRACT)


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_server_errors(case: schemathesis.Case, base_url: str) -> None:
    if case.query and "wait" in case.query:
        case.query["wait"] = 0  # generated waits would only make the run slow
    response = case.call(base_url=base_url, timeout=30)
    assert response.status_code < 500 or response.status_code == 503, (
        f"{case.method} {case.path} -> {response.status_code}: {response.text[:500]}"
    )

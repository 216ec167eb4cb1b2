"""Fixtures for the job-queue, storage and profile-input security tests: a tiny model, settings, a live API."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _servers import live_server  # noqa: E402
from _tiny_model import save_tiny_model  # noqa: E402

from service.app.main import create_app  # noqa: E402
from service.config import ApiSettings, WorkerTuning  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing a test does may touch the user's real cache or read their CPCNN_* settings."""
    monkeypatch.setenv("CPCNN_HOME", str(tmp_path / "home"))
    for name in ("CPCNN_REDIS_URL", "CPCNN_API_KEY", "CPCNN_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    save_tiny_model(root, "cnn1")
    return root


@pytest.fixture
def make_settings(tmp_path: Path, models_dir: Path) -> Callable[..., ApiSettings]:
    def factory(**overrides: Any) -> ApiSettings:
        worker = WorkerTuning(device="cpu", threads=1, max_wait_ms=5, slots=2)
        values: dict[str, Any] = {"env": "dev", "data_dir": tmp_path / "data", "models_dir": models_dir,
                                  "worker": worker}
        return ApiSettings(**(values | overrides))

    return factory


@pytest.fixture
def serve(make_settings: Callable[..., ApiSettings]) -> Iterator[Callable[..., httpx.Client]]:
    """``serve(**settings)`` -> a client of a live embedded-mode API (stopped at teardown)."""
    stack: list[Any] = []

    def start(**overrides: Any) -> httpx.Client:
        server = live_server(create_app(make_settings(**overrides)))
        url = server.__enter__()
        client = httpx.Client(base_url=url, timeout=60)
        stack.append((server, client))
        return client

    yield start
    for server, client in reversed(stack):
        client.close()
        server.__exit__(None, None, None)


def problem(response: httpx.Response, status: int, code: str, *words: str) -> dict[str, Any]:
    """Assert an application/problem+json answer with this status and code whose detail names ``words``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["code"] == code, body
    for word in words:
        assert word in body["detail"], body["detail"]
    return body

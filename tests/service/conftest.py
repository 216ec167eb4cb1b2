"""Fixtures for the service tests: a tiny model in a temporary store, settings, a live embedded API."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _servers import live_server, wait_ready  # noqa: E402
from _tiny_model import locations_csv, save_tiny_model, synthetic_site, tiff_bytes  # noqa: E402
from cpcnn.service.app.main import create_app  # noqa: E402
from cpcnn.service.config import ApiSettings, WorkerTuning  # noqa: E402

from cpcnn._types import CHANNELS  # noqa: E402


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
    save_tiny_model(root, "cnn1-copy")
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
def api(make_settings: Callable[..., ApiSettings]) -> Iterator[httpx.Client]:
    """An embedded-mode API on a real port, ready (model loaded)."""
    with live_server(create_app(make_settings())) as url, httpx.Client(base_url=url, timeout=30) as client:
        wait_ready(client)
        yield client


@pytest.fixture(scope="session")
def site() -> dict[str, Any]:
    """A small synthetic five-channel site as upload parts."""
    planes, centers = synthetic_site(size=256, n_cells=6, seed=1)
    return {
        "planes": planes,
        "centers": centers,
        "files": {name: (f"{name}.tif", tiff_bytes(planes[name]), "image/tiff") for name in CHANNELS},
        "locations": locations_csv(centers),
    }


"""SDK fixtures: a tiny model, synthetic sites and one live embedded server per module."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _servers import live_server  # noqa: E402
from _tiny_model import save_tiny_model, synthetic_site  # noqa: E402

from cpcnn._types import CHANNELS  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CPCNN_HOME", str(tmp_path / "home"))
    for name in ("CPCNN_REDIS_URL", "CPCNN_API_KEY", "CPCNN_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One embedded server for the module (model loading is the slow part)."""
    from cpcnn.service.app.main import create_app
    from cpcnn.service.config import ApiSettings, WorkerTuning

    root = tmp_path_factory.mktemp("sdk")
    save_tiny_model(root / "models")
    settings = ApiSettings(env="dev", data_dir=root / "data", models_dir=root / "models",
                           worker=WorkerTuning(device="cpu", threads=1, max_wait_ms=5, slots=2))
    with live_server(create_app(settings)) as url:
        import httpx

        for _ in range(200):
            if httpx.get(f"{url}/readyz").status_code == 200:
                break
            import time

            time.sleep(0.05)
        yield url


@pytest.fixture(scope="module")
def planes_and_centers() -> tuple[dict[str, Any], Any]:
    planes, centers = synthetic_site(size=200, n_cells=4, seed=3)
    return {c: planes[c] for c in CHANNELS}, centers

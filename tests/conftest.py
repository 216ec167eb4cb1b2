"""Fixtures shared across the test folders, and the rule that keeps ``pytest -m "not slow"`` free of torch.

Helper modules (``_plate``, ``_servers``, ``_tiny_model``, ...) import by name because pyproject.toml
puts ``tests`` on pytest's ``pythonpath``. Service modules are imported inside the fixtures that start
a server, so collecting the domain's tests does not load FastAPI.

- ``plate``/``chain``: one small plate made by ``cpcnn embed`` and its profile chain (session-wide).
- ``models_dir``, ``make_settings``, ``api``, ``serve``, ``site``: a tiny model in a temporary store,
  API settings, live embedded APIs and a synthetic site as upload parts.
- ``server_url``, ``planes_and_centers``: one live server per SDK test module and a site as arrays.

Modules that need torch (the training and model export layers) are marked ``slow`` as a whole
(``pytestmark``); when the marker expression deselects such a module it is not even imported, and a
run that deselects ``slow`` fails if anything imported torch anyway.
"""

from __future__ import annotations

import ast
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from _plate import Plate, build_plate, run_chain
from _pytest.mark.expression import Expression
from _servers import REPO_ROOT, live_server, wait_ready
from _tiny_model import locations_csv, save_tiny_model, synthetic_site, tiff_bytes

from cpcnn._types import CHANNELS

if TYPE_CHECKING:
    from cpcnn.service.config import ApiSettings


# --- collection: whole-module markers, and no torch when slow tests are deselected ---------------------


def _module_marks(path: Path) -> set[str]:
    """Names of the ``pytest.mark.NAME`` markers in a module's top-level ``pytestmark``, read without importing it."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "pytestmark" for t in node.targets):
            return {
                sub.attr for sub in ast.walk(node.value)
                if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Attribute)
                and sub.value.attr == "mark"
            }
    return set()


def _deselects(config: pytest.Config, marks: set[str]) -> bool:
    """True when ``-m`` deselects every test carrying ``marks``, whatever other markers a test adds."""
    text = config.getoption("markexpr")
    if not text:
        return False
    expression = Expression.compile(text)

    def matcher(others: bool) -> Callable[..., bool]:
        return lambda name, /, **_: name in marks or others

    return not any(expression.evaluate(matcher(others)) for others in (False, True))


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Do not import a module whose tests the marker expression deselects anyway (e.g. torch modules)."""
    if collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    marks = _module_marks(collection_path)
    return True if marks and _deselects(config, marks) else None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """``-m "not slow"`` must run without torch: the domain, the service and the SDK do not need it."""
    if _deselects(session.config, {"slow"}) and "torch" in sys.modules and exitstatus == 0:
        sys.stderr.write("\nERROR: torch was imported although slow tests were deselected\n")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# --- environment ---------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing a test does may touch the user's real cache or read their CPCNN_* settings."""
    monkeypatch.setenv("CPCNN_HOME", str(tmp_path / "home"))
    for name in ("CPCNN_REDIS_URL", "CPCNN_API_KEY", "CPCNN_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)


# --- the CLI chain on a small plate --------------------------------------------------------------------


@pytest.fixture(scope="session")
def plate(tmp_path_factory: pytest.TempPathFactory) -> Plate:
    """32 sites (16 wells x 2) embedded by the CLI with the tiny model; built once per test run."""
    return build_plate(tmp_path_factory.mktemp("plate"))


@pytest.fixture(scope="session")
def chain(plate: Plate) -> dict[str, Path]:
    """The CLI chain's outputs on ``plate`` (see ``run_chain``)."""
    return run_chain(plate)


# --- live APIs -----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    save_tiny_model(root, "cnn1")
    save_tiny_model(root, "cnn1-copy")
    return root


@pytest.fixture
def make_settings(tmp_path: Path, models_dir: Path) -> Callable[..., ApiSettings]:
    from cpcnn.service.config import ApiSettings, WorkerTuning

    def factory(**overrides: Any) -> ApiSettings:
        worker = WorkerTuning(device="cpu", threads=1, max_wait_ms=5, slots=2)
        values: dict[str, Any] = {"env": "dev", "data_dir": tmp_path / "data", "models_dir": models_dir,
                                  "worker": worker}
        return ApiSettings(**(values | overrides))

    return factory


@pytest.fixture
def api(make_settings: Callable[..., ApiSettings]) -> Iterator[httpx.Client]:
    """An embedded-mode API on a real port, ready (model loaded)."""
    from cpcnn.service.app.main import create_app

    with live_server(create_app(make_settings())) as url, httpx.Client(base_url=url, timeout=30) as client:
        wait_ready(client)
        yield client


@pytest.fixture
def serve(make_settings: Callable[..., ApiSettings]) -> Iterator[Callable[..., httpx.Client]]:
    """``serve(**settings)`` -> a client of a live embedded-mode API (stopped at teardown)."""
    from cpcnn.service.app.main import create_app

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


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One embedded server for the module (model loading is the slow part)."""
    from cpcnn.service.app.main import create_app
    from cpcnn.service.config import ApiSettings, WorkerTuning

    root = tmp_path_factory.mktemp("sdk")
    save_tiny_model(root / "models")
    settings = ApiSettings(env="dev", data_dir=root / "data", models_dir=root / "models",
                           worker=WorkerTuning(device="cpu", threads=1, max_wait_ms=5, slots=2))
    with live_server(create_app(settings)) as url, httpx.Client(base_url=url) as client:
        wait_ready(client)
        yield url


# --- synthetic sites -----------------------------------------------------------------------------------


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


@pytest.fixture(scope="module")
def planes_and_centers() -> tuple[dict[str, Any], Any]:
    planes, centers = synthetic_site(size=200, n_cells=4, seed=3)
    return {c: planes[c] for c in CHANNELS}, centers


# --- a real browser for the web console (Debian's chromium + chromium-driver; never downloaded) ----------

CHROMEDRIVER = Path(os.environ.get("CPCNN_CHROMEDRIVER", "/usr/bin/chromedriver"))
SCREENSHOTS = Path(os.environ.get("CPCNN_UI_SCREENSHOTS", REPO_ROOT / "build" / "ui-screenshots"))
WINDOW = (1280, 800)


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """One headless Chromium per module, 1280x800, downloads disabled."""
    binary = _chromium()
    if binary is None or not CHROMEDRIVER.is_file():
        missing = "chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("CI") == "true":  # scripts/test.sh installs them: in CI their absence is a failure
            pytest.fail(missing)
        pytest.skip(missing)
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 f"--window-size={WINDOW[0]},{WINDOW[1]}", "--force-device-scale-factor=1"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_window_size(*WINDOW)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS

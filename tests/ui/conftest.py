"""A headless system Chromium driven by Selenium, and a live server for the console's browser tests.

Nothing downloads a browser: the driver is ``/usr/bin/chromedriver`` (Debian's ``chromium-driver``),
given to Selenium explicitly so Selenium Manager never runs; without it the browser tests skip.
Screenshots go to ``build/ui-screenshots`` (or ``$CPCNN_UI_SCREENSHOTS``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from _servers import REPO_ROOT, live_server, wait_ready
from _tiny_model import save_tiny_model

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
        pytest.skip("chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
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


@pytest.fixture(scope="module")
def console_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An embedded-mode server without an API key, tiny model loaded."""
    from cpcnn.service.app.main import create_app
    from cpcnn.service.config import ApiSettings, WorkerTuning

    root = tmp_path_factory.mktemp("console")
    save_tiny_model(root / "models")
    settings = ApiSettings(env="dev", data_dir=root / "data", models_dir=root / "models",
                           worker=WorkerTuning(device="cpu", threads=1, max_wait_ms=5, slots=2))
    with live_server(create_app(settings)) as url, httpx.Client(base_url=url) as client:
        wait_ready(client)
        yield url


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS

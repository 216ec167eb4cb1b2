"""The web console in a real (headless) Chromium: each page's main flow, the API key, escaping."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from _profiles_data import synthetic_profiles
from _servers import REPO_ROOT, wait_ready

SAMPLE = REPO_ROOT / "examples" / "data" / "pcatlas-BR00143976-C03-s3"
SAMPLE_CHANNELS = {"DNA": "ch5", "RNA": "ch6", "ER": "ch2", "AGP": "ch3", "Mito": "ch4"}
#: A value that would run script if it were ever parsed as HTML.
EVIL = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'


def wait_for(driver: Any, script: str, *, timeout: float = 60) -> Any:
    """Poll a JavaScript expression until it is truthy; returns its value."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: d.execute_script(f"return {script}"))


def by_testid(driver: Any, name: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, f'[data-testid="{name}"]')


def all_by_testid(driver: Any, name: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, f'[data-testid="{name}"]')


def shoot(driver: Any, folder: Path, name: str) -> None:
    """The whole page at the window's width (the window grows to the page's height, then shrinks back)."""
    width, height = driver.get_window_size()["width"], driver.get_window_size()["height"]
    page = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, max(height, page + height - driver.execute_script("return innerHeight")))
    driver.save_screenshot(str(folder / f"{name}.png"))
    driver.set_window_size(width, height)


def test_service_page_shows_a_live_worker(browser: Any, server_url: str, screenshots: Path) -> None:
    browser.get(f"{server_url}/")
    assert browser.current_url.endswith("/ui")
    wait_for(browser, "document.querySelector('[data-testid=worker-row]')")
    row = by_testid(browser, "worker-row").text
    assert "CPUExecutionProvider" in row and "cnn1" in row and "ago" in row
    assert by_testid(browser, "queue-depth").text == "0"
    assert by_testid(browser, "throughput-chart").find_element("css selector", "svg")
    assert "No plate jobs yet." in by_testid(browser, "plate-jobs").text  # the server has plate jobs, none submitted
    shoot(browser, screenshots, "service")


def test_upload_of_the_real_site_shows_41_nuclei_crops_and_the_result(
    browser: Any, server_url: str, screenshots: Path
) -> None:
    browser.get(f"{server_url}/ui#try")
    assert by_testid(browser, "upload-form").is_displayed()
    for channel, code in SAMPLE_CHANNELS.items():
        by_testid(browser, f"file-{channel}").send_keys(str(SAMPLE / f"r03c03f03p01-{code}sk1fk1fl1.tiff"))
    by_testid(browser, "file-locations").send_keys(str(SAMPLE / "r03c03f03p01-Nuclei.csv"))
    by_testid(browser, "meta-plate").send_keys("BR00143976")
    browser.find_element("css selector", "input[name=well]").send_keys(EVIL)
    by_testid(browser, "upload-submit").click()
    wait_for(browser, "document.querySelectorAll('[data-testid=nucleus-marker]').length >= 41", timeout=120)
    assert len(all_by_testid(browser, "nucleus-marker")) == 41
    wait_for(browser, "document.querySelector('[data-testid=job-facts]')", timeout=120)
    assert "41" in by_testid(browser, "job-facts").text
    all_by_testid(browser, "nucleus-marker")[7].click()
    wait_for(browser, "document.querySelectorAll('[data-testid=crop] img').length === 5")
    sizes = browser.execute_script(
        "return [...document.querySelectorAll('[data-testid=crop] img')].map(i => [i.naturalWidth, i.naturalHeight])")
    assert sizes == [[128, 128]] * 5
    captions = [c.text for c in by_testid(browser, "crop-gallery").find_elements("css selector", "figcaption")]
    assert captions == ["DNA", "RNA", "ER", "AGP", "Mito"]
    assert by_testid(browser, "try-status").text == ""
    shoot(browser, screenshots, "try")
    job_id = browser.find_element("css selector", "[data-testid=job-facts] td").text
    csv_text = browser.execute_async_script(
        "const done = arguments[1]; api('GET', `/v1/jobs/${arguments[0]}/result?format=json`)"
        ".then((r) => done(cellsCsv(r)), (e) => done(String(e)))", job_id)
    shown = pd.read_csv(io.StringIO(csv_text), keep_default_na=False)
    stored = pd.read_parquet(io.BytesIO(httpx.get(f"{server_url}/v1/jobs/{job_id}/result?format=parquet").content))
    assert list(shown.columns) == list(stored.columns) and len(shown) == 41
    np.testing.assert_allclose(shown.filter(like="efficientnet_").to_numpy(),
                               stored.filter(like="efficientnet_").to_numpy(), rtol=1e-6)
    assert list(shown["Metadata_ObjectNumber"]) == list(stored["Metadata_ObjectNumber"])
    assert (shown["Metadata_Well"] == EVIL).all()
    browser.get(f"{server_url}/ui#service")
    wait_for(browser, "document.querySelector('#recent-jobs code')")
    assert f"BR00143976 / {EVIL}" in by_testid(browser, "recent-jobs").text  # the typed well, as text
    assert browser.execute_script("return window.__pwned") is None


def test_the_bundled_example_runs_with_one_click(browser: Any, server_url: str) -> None:
    browser.get(f"{server_url}/ui#try")
    wait_for(browser, "!document.querySelector('[data-testid=use-example]').hidden")
    by_testid(browser, "use-example").click()
    wait_for(browser, "document.querySelectorAll('[data-testid=nucleus-marker]').length >= 41", timeout=120)
    wait_for(browser, "document.querySelector('[data-testid=job-facts]')", timeout=120)
    assert len(all_by_testid(browser, "nucleus-marker")) == 41
    assert "BR00143976" in by_testid(browser, "meta-plate").get_attribute("value")


@pytest.fixture(scope="module")
def stored_profiles(server_url: str) -> dict[str, Any]:
    table = synthetic_profiles()
    table.loc[table.index[-1], "Metadata_moa"] = EVIL
    body = table.to_csv(index=False).encode()
    with httpx.Client(base_url=server_url) as client:
        stored = client.post("/v1/tables", files={"file": (f"{EVIL}.csv", body, "text/csv")}).json()
        library = client.post("/v1/libraries", json={"table_id": stored["id"], "id_column": "Metadata_broad_sample",
                                                     "annotations": ["Metadata_moa"]}).json()
    return {"table": stored, "library": library}


def test_profiles_map_match_and_evaluation(
    browser: Any, server_url: str, screenshots: Path, stored_profiles: dict[str, Any]
) -> None:
    from selenium.webdriver.support.ui import Select

    browser.get(f"{server_url}/ui#profiles")
    wait_for(browser, "document.querySelector('#map-table option')")
    assert stored_profiles["table"]["name"] in by_testid(browser, "tables").text  # the file name, as text
    Select(by_testid(browser, "map-color")).select_by_value("Metadata_moa")
    by_testid(browser, "map-submit").click()
    wait_for(browser, "document.querySelectorAll('[data-testid=map-point]').length > 0")
    assert len(all_by_testid(browser, "map-point")) == stored_profiles["table"]["n_rows"]
    legend = [item.text for item in all_by_testid(browser, "legend-item")]
    assert any(text.startswith("(missing)") for text in legend) and any(EVIL in text for text in legend)
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(browser).move_to_element(all_by_testid(browser, "map-point")[-1]).perform()
    wait_for(browser, "!document.querySelector('#map-tip').hidden")
    tip = browser.find_element("id", "map-tip").text
    assert f"row {stored_profiles['table']['n_rows'] - 1}" in tip and f"Metadata_moa: {EVIL}" in tip

    by_testid(browser, "match-submit").click()
    wait_for(browser, "document.querySelectorAll('[data-testid=match-row]').length > 0")
    rows = all_by_testid(browser, "match-row")
    assert len(rows) == stored_profiles["table"]["n_rows"] * 5
    assert "moa-" in by_testid(browser, "match-results").text

    Select(by_testid(browser, "eval-id")).select_by_value("Metadata_broad_sample")
    Select(by_testid(browser, "eval-annotation")).select_by_value("Metadata_moa")
    by_testid(browser, "eval-submit").click()
    wait_for(browser, "document.querySelector('[data-testid=eval-metrics]') && "
                      "document.querySelector('[data-testid=pr-curve] path')")
    assert "mAP" in by_testid(browser, "eval-metrics").text
    assert browser.execute_script("return document.documentElement.scrollWidth <= innerWidth")
    shoot(browser, screenshots, "profiles")
    assert browser.execute_script("return window.__pwned") is None
    assert browser.execute_script("return document.querySelectorAll('img[src=\"x\"], main script').length") == 0


def test_plate_jobs_show_their_progress(browser: Any, tmp_path: Path) -> None:
    """The Service page lists ``GET /v1/plates`` (answered here by a stand-in route placed first)."""
    from _servers import live_server
    from _tiny_model import save_tiny_model
    from cpcnn.service.app.main import create_app
    from cpcnn.service.config import ApiSettings, WorkerTuning
    from fastapi.routing import APIRoute

    save_tiny_model(tmp_path / "models")
    app = create_app(ApiSettings(env="dev", data_dir=tmp_path / "data", models_dir=tmp_path / "models",
                                 worker=WorkerTuning(device="cpu", threads=1, max_wait_ms=5, slots=1)))
    plate = {"id": "f" * 32, "status": "running", "created_at": "2026-01-01T00:00:00Z",
             "progress": {"sites": 8, "done": 2, "failed": 1, "pending": 5, "cells": 82, "eta_s": 30.0}}

    async def plates() -> dict[str, Any]:
        return {"data": [plate], "count": 1}

    app.router.routes.insert(0, APIRoute("/v1/plates", plates, methods=["GET"]))
    with live_server(app) as url:
        browser.get(f"{url}/ui#service")
        wait_for(browser, "document.querySelector('[data-testid=plate-row]')")
        row = by_testid(browser, "plate-row").text
    assert "running" in row and "2 / 8 sites (25 %), 1 failed" in row and "82" in row and "30 s" in row


def test_dark_theme_is_kept_and_readable(browser: Any, server_url: str, screenshots: Path) -> None:
    browser.get(f"{server_url}/ui#service")
    wait_for(browser, "document.querySelector('[data-testid=worker-row]')")
    if browser.execute_script("return document.documentElement.dataset.theme") != "dark":
        by_testid(browser, "theme-toggle").click()
    background = browser.execute_script("return getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(15, 17, 21)"
    browser.refresh()
    assert browser.execute_script("return document.documentElement.dataset.theme") == "dark"
    browser.get(f"{server_url}/ui#try")
    shoot(browser, screenshots, "try-dark")
    browser.get(f"{server_url}/ui#service")
    wait_for(browser, "document.querySelector('[data-testid=worker-row]')")
    shoot(browser, screenshots, "service-dark")
    by_testid(browser, "theme-toggle").click()


def test_pages_fit_a_small_laptop_screen(
    browser: Any, server_url: str, screenshots: Path, stored_profiles: dict[str, Any]
) -> None:
    size = browser.get_window_size()
    browser.set_window_size(1024, 640)
    try:
        for page in ("service", "try", "profiles"):
            browser.get(f"{server_url}/ui#{page}")
            wait_for(browser, f"!document.querySelector('#page-{page}').hidden")
            if page == "profiles":
                wait_for(browser, "document.querySelector('#map-table option')")
                by_testid(browser, "map-submit").click()
                wait_for(browser, "document.querySelector('[data-testid=map-point]')")
            assert browser.execute_script("return document.documentElement.scrollWidth <= innerWidth"), page
            shoot(browser, screenshots, f"{page}-1024")
    finally:
        browser.set_window_size(size["width"], size["height"])


def test_keyboard_reaches_the_main_controls(browser: Any, server_url: str) -> None:
    browser.get(f"{server_url}/ui#try")
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    reached = set()
    for _ in range(40):
        ActionChains(browser).send_keys(Keys.TAB).perform()
        reached.add(browser.execute_script("const a = document.activeElement; return a.dataset.testid || a.id"))
    assert {"nav-service", "nav-profiles", "theme-toggle", "file-DNA", "upload-submit", "use-example"} <= reached


def test_a_wrong_api_key_gets_a_clear_message(browser: Any, serve: Any, screenshots: Path) -> None:
    client = serve(api_key="right-key")
    wait_ready(client.__class__(base_url=str(client.base_url), headers={"X-API-Key": "right-key"}))
    url = str(client.base_url).rstrip("/")
    browser.get(f"{url}/ui#service")
    browser.execute_script("sessionStorage.clear()")
    browser.refresh()
    wait_for(browser, "document.querySelector('[data-testid=key-dialog]').open")
    assert "needs an API key" in by_testid(browser, "key-reason").text
    by_testid(browser, "key-input").send_keys("wrong-key")
    by_testid(browser, "key-submit").click()
    wait_for(browser, "document.querySelector('[data-testid=key-dialog]').open && "
                      "document.querySelector('[data-testid=banner]').textContent.includes('not accepted')")
    shoot(browser, screenshots, "wrong-key")
    assert "wrong-key" not in browser.current_url
    by_testid(browser, "key-input").send_keys("right-key")
    by_testid(browser, "key-submit").click()
    wait_for(browser, "document.querySelector('[data-testid=worker-row]')")
    assert by_testid(browser, "banner").get_attribute("hidden") is not None
    assert browser.execute_script("return sessionStorage.getItem('cpcnn.apiKey')") == "right-key"

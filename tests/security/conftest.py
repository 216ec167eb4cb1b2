"""The live-API fixtures of ``tests/service/conftest.py`` (tiny model, settings, embedded server), re-exported,
plus ``serve``: several live APIs with their own settings in one test."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

_TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_TESTS))
sys.path.insert(0, str(Path(__file__).resolve().parent))

_spec = importlib.util.spec_from_file_location("_service_fixtures", _TESTS / "service" / "conftest.py")
assert _spec is not None and _spec.loader is not None
_service = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_service)

_isolated_home = _service._isolated_home
models_dir = _service.models_dir
make_settings = _service.make_settings
api = _service.api
site = _service.site


@pytest.fixture
def serve(make_settings: Callable[..., Any]) -> Iterator[Callable[..., httpx.Client]]:
    """``serve(**settings)`` -> a client of a live embedded-mode API (stopped at teardown)."""
    from _servers import live_server
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

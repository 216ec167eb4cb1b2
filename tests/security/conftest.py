"""The live-API fixtures of ``tests/service/conftest.py`` (tiny model, settings, embedded server), re-exported."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

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

"""Fixtures shared across test modules: one small plate made by ``cpcnn embed``, and its profile chain."""

from __future__ import annotations

from pathlib import Path

import pytest
from _plate import Plate, build_plate, run_chain


@pytest.fixture(scope="session")
def plate(tmp_path_factory: pytest.TempPathFactory) -> Plate:
    """32 sites (16 wells x 2) embedded by the CLI with the tiny model; built once per test run."""
    return build_plate(tmp_path_factory.mktemp("plate"))


@pytest.fixture(scope="session")
def chain(plate: Plate) -> dict[str, Path]:
    """The CLI chain's outputs on ``plate`` (see ``run_chain``)."""
    return run_chain(plate)

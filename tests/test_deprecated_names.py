"""Old module names keep working, with a warning that names the new one."""

from __future__ import annotations

import importlib
import sys

import pytest


def test_cpcnn_store_is_a_deprecated_alias_of_model_store() -> None:
    import cpcnn.model_store

    sys.modules.pop("cpcnn.store", None)
    with pytest.warns(DeprecationWarning, match="cpcnn.model_store"):
        old = importlib.import_module("cpcnn.store")
    assert old.ModelStore is cpcnn.model_store.ModelStore
    assert old.StoredModel is cpcnn.model_store.StoredModel

"""Deprecated name of :mod:`cpcnn.model_store` (the local ONNX model store); import from there."""

from __future__ import annotations

import warnings

from cpcnn.model_store import (
    DEFAULT_MODEL,
    ModelStore,
    StoredModel,
    cpcnn_home,
    load_model_file,
    validate_model_name,
)

__all__ = ["DEFAULT_MODEL", "ModelStore", "StoredModel", "cpcnn_home", "load_model_file", "validate_model_name"]

warnings.warn("cpcnn.store is deprecated; import cpcnn.model_store", DeprecationWarning, stacklevel=2)

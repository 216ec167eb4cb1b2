"""DeepProfiler single-cell feature files (``features/{Plate}/{Well}/{Site}.npz``) -> profile tables.

DeepProfiler stores each site's metadata as a pickled ``dict`` inside the ``.npz``. Plain ``pickle``
would run whatever a crafted file asks for, so the ``metadata`` member is read with an unpickler that
resolves only numpy's array-reconstruction globals (``_reconstruct``, ``ndarray``, ``dtype``,
``scalar``); builtin containers need no globals. ``features`` and ``locations`` are plain numeric
arrays and are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import importlib
import io
import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cpcnn._types import FEATURE_PREFIX
from cpcnn.errors import InputError

METADATA_PREFIX = "Metadata_"

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global except numpy's array reconstruction functions."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module.removeprefix("numpy.core.")
        return getattr(importlib.import_module(module), name)


def read_site_metadata(path: Path) -> dict[str, Any]:
    """The ``metadata`` dict of one DeepProfiler ``.npz`` ({} when absent); never executes code."""
    with zipfile.ZipFile(path) as archive:
        if "metadata.npy" not in archive.namelist():
            return {}
        raw = io.BytesIO(archive.read("metadata.npy"))
    version = np.lib.format.read_magic(raw)
    if version == (1, 0):
        _, _, dtype = np.lib.format.read_array_header_1_0(raw)
    elif version == (2, 0):
        _, _, dtype = np.lib.format.read_array_header_2_0(raw)
    else:
        raise InputError(f"{path}: unsupported .npy version {version} for 'metadata'")
    if dtype != np.dtype(object):
        raise InputError(f"{path}: 'metadata' is a {dtype} array, expected a pickled dict")
    try:
        value = _MetadataUnpickler(raw).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
        raise InputError(f"{path}: unreadable 'metadata' ({exc})") from exc
    item = value.item() if isinstance(value, np.ndarray) and value.shape == () else value
    if not isinstance(item, dict):
        raise InputError(f"{path}: 'metadata' holds {type(item).__name__}, expected a dict")
    return {str(k): v for k, v in item.items()}


def _path_metadata(path: Path, root: Path) -> dict[str, str]:
    """Plate/Well/Site from ``{Plate}/{Well}/{Site}.npz`` or ``{Plate}/{Well}_{Site}.npz`` layouts."""
    parts = path.relative_to(root).with_suffix("").parts
    if len(parts) >= 3:
        return {"Metadata_Plate": parts[-3], "Metadata_Well": parts[-2], "Metadata_Site": parts[-1]}
    if len(parts) == 2 and "_" in parts[1]:
        well, site = parts[1].rsplit("_", 1)
        return {"Metadata_Plate": parts[0], "Metadata_Well": well, "Metadata_Site": site}
    return {}


def npz_files(root: Path) -> list[Path]:
    """Every ``*.npz`` below ``root``, sorted so reads are reproducible."""
    files = sorted(p for p in root.rglob("*.npz") if p.is_file())
    if not files:
        raise InputError(f"{root}: no DeepProfiler .npz files found below this folder")
    return files


def read_site(path: Path, root: Path | None = None) -> pd.DataFrame:
    """One site file -> (cells, Metadata_* + ``{Metadata_Model}_{i}`` float32) table, cells in file order."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "features" not in archive.files:
                raise InputError(f"{path}: no 'features' array (keys: {', '.join(archive.files)})")
            features = np.asarray(archive["features"], dtype=np.float32)
            locations = np.asarray(archive["locations"]) if "locations" in archive.files else None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: not a readable .npz ({exc})") from exc
    if features.ndim != 2:
        raise InputError(f"{path}: 'features' has shape {features.shape}, expected (cells, features)")
    meta = {**(_path_metadata(path, root) if root else {}), **read_site_metadata(path)}
    model = str(meta.get("Metadata_Model", FEATURE_PREFIX))
    columns: dict[str, Any] = {}
    for key, value in meta.items():
        name = key if key.startswith(METADATA_PREFIX) else METADATA_PREFIX + key
        columns[name] = np.full(len(features), str(value), dtype=object)
    if locations is not None and locations.ndim == 2 and locations.shape == (len(features), 2):
        columns["Metadata_Nuclei_Location_Center_X"] = locations[:, 0].astype(np.float64)
        columns["Metadata_Nuclei_Location_Center_Y"] = locations[:, 1].astype(np.float64)
    names = [f"{model}_{i}" for i in range(features.shape[1])]
    meta_frame = pd.DataFrame(columns, index=pd.RangeIndex(len(features)))
    return pd.concat([meta_frame, pd.DataFrame(features, columns=names)], axis=1)


def iter_sites(root: Path) -> Iterator[pd.DataFrame]:
    """Each site file below ``root`` as a table, one at a time (memory: one site).

    Every site must have the same feature names as the first (same model and feature count).
    """
    expected: list[str] | None = None
    for path in npz_files(root):
        site = read_site(path, root)
        names = [str(c) for c in site.columns if not str(c).startswith(METADATA_PREFIX)]
        if expected is None:
            expected = names
        elif names != expected:
            raise InputError(
                f"{path}: feature mismatch with the first site ({len(names)} features named {names[0]}..., "
                f"expected {len(expected)} named {expected[0]}...)"
            )
        yield site

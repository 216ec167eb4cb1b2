"""Write per-cell features as a table: Parquet/CSV (pycytominer naming) or DeepProfiler's npz layout.

A cells table has exactly two kinds of columns, so no tool can mistake a coordinate for a feature:
``Metadata_*`` (``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site`` (an integer when the site is
one, as in DeepProfiler and JUMP), any other site metadata, ``Metadata_Model``,
``Metadata_ObjectNumber``, ``Metadata_Nuclei_Location_Center_X/Y``), then the features
``{prefix}_0 ... {prefix}_{D-1}`` (float32).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cpcnn._types import F32Array, F64Array
from cpcnn.errors import InputError
from cpcnn.locations import Locations

X_COLUMN = "Metadata_Nuclei_Location_Center_X"
Y_COLUMN = "Metadata_Nuclei_Location_Center_Y"
OBJECT_NUMBER_COLUMN = "Metadata_ObjectNumber"
SITE_KEYS = ("Metadata_Plate", "Metadata_Well", "Metadata_Site")


def feature_names(prefix: str, size: int) -> list[str]:
    """pycytominer's deep feature names: ``{prefix}_0 ... {prefix}_{size-1}``."""
    return [f"{prefix}_{i}" for i in range(size)]


def metadata_value(key: str, value: Any) -> str | int:
    """A site metadata value as written: ``Metadata_Site`` of digits becomes an int, the rest text."""
    text = str(value)
    if key == "Metadata_Site" and text.strip().isascii() and text.strip().isdigit():
        return int(text.strip())
    return text


def site_metadata(metadata: Mapping[str, Any]) -> dict[str, str | int]:
    """Plate, well and site first (empty text when absent), then any other keys, values as written."""
    keys = [*SITE_KEYS, *(k for k in metadata if k not in SITE_KEYS)]
    return {key: metadata_value(key, metadata.get(key, "")) for key in keys}


def cell_locations(centers: F64Array | Locations) -> Locations:
    """Centres alone are numbered by position (1..N); ``Locations`` keep their own object numbers."""
    return centers if isinstance(centers, Locations) else Locations.numbered(centers)


def cells_table(
    features: F32Array,
    centers: F64Array | Locations,
    *,
    metadata: Mapping[str, Any],
    model_name: str,
    feature_prefix: str = "efficientnet",
):  # -> pyarrow.Table (pyarrow is a base dependency; imported lazily to keep import time low)
    """(N, D) features + N cell locations + site metadata -> a pyarrow Table, one row per cell."""
    import pyarrow as pa

    cells = cell_locations(centers)
    n_cells = features.shape[0]
    if len(cells) != n_cells:
        raise InputError(f"{n_cells} feature rows but {len(cells)} locations")
    columns: dict[str, pa.Array] = {}
    for key, value in site_metadata(metadata).items():
        kind = pa.int64() if isinstance(value, int) else pa.string()
        columns[key] = pa.array([value] * n_cells, kind)
    columns["Metadata_Model"] = pa.array([model_name] * n_cells, pa.string())
    columns[OBJECT_NUMBER_COLUMN] = pa.array(cells.object_numbers.astype(np.int64))
    columns[X_COLUMN] = pa.array(cells.centers[:, 0].astype(np.float64))
    columns[Y_COLUMN] = pa.array(cells.centers[:, 1].astype(np.float64))
    features = np.ascontiguousarray(features, dtype=np.float32)
    for index, name in enumerate(feature_names(feature_prefix, features.shape[1])):
        columns[name] = pa.array(features[:, index])
    return pa.table(columns)


def write_cells(
    path: Path,
    features: F32Array,
    centers: F64Array | Locations,
    *,
    metadata: Mapping[str, Any],
    model_name: str,
    feature_prefix: str = "efficientnet",
) -> Path:
    """Write cells to ``.parquet``, ``.csv`` or DeepProfiler-style ``.npz`` (chosen by extension).

    The npz holds DeepProfiler's members (``features`` (N, D) float32, ``metadata`` a pickled dict
    with the table's site keys and ``Metadata_Model`` = the feature prefix, ``locations`` (N, 2)) plus
    ``object_numbers`` (N,) int64, which DeepProfiler readers ignore.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".parquet", ".csv"):
        raise InputError(f"unknown output format {path.name}: use .parquet, .csv or .npz")
    cells = cell_locations(centers)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npz":
        if len(cells) != features.shape[0]:
            raise InputError(f"{features.shape[0]} feature rows but {len(cells)} locations")
        meta = {**site_metadata(metadata), "Metadata_Model": feature_prefix}
        np.savez_compressed(
            path,
            features=np.asarray(features, np.float32),
            metadata=np.array(meta, dtype=object),
            locations=np.asarray(cells.centers, np.float64),
            object_numbers=cells.object_numbers.astype(np.int64),
        )
        return path
    table = cells_table(features, cells, metadata=metadata, model_name=model_name, feature_prefix=feature_prefix)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, path)
    else:
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, path)
    return path

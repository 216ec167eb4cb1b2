"""Write per-cell features as a table: Parquet (pycytominer naming) or DeepProfiler's npz layout."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from cpcnn._types import F32Array, F64Array
from cpcnn.errors import InputError

X_COLUMN = "Nuclei_Location_Center_X"
Y_COLUMN = "Nuclei_Location_Center_Y"
SITE_KEYS = ("Metadata_Plate", "Metadata_Well", "Metadata_Site")


def feature_columns(prefix: str, size: int) -> list[str]:
    """pycytominer's deep feature names: ``{prefix}_0 ... {prefix}_{size-1}``."""
    return [f"{prefix}_{i}" for i in range(size)]


def cells_table(
    features: F32Array,
    centers: F64Array,
    *,
    metadata: Mapping[str, str],
    model_name: str,
    feature_prefix: str = "efficientnet",
):  # -> pyarrow.Table (pyarrow is a base dependency; imported lazily to keep import time low)
    """(N, D) features + (N, 2) centres + site metadata -> a pyarrow Table, one row per cell."""
    import pyarrow as pa

    n_cells = features.shape[0]
    if centers.shape[0] != n_cells:
        raise InputError(f"{n_cells} feature rows but {centers.shape[0]} locations")
    columns: dict[str, pa.Array] = {}
    for key in SITE_KEYS:
        columns[key] = pa.array([str(metadata.get(key, ""))] * n_cells, pa.string())
    for key, value in metadata.items():
        if key not in columns:
            columns[key] = pa.array([str(value)] * n_cells, pa.string())
    columns["Metadata_Model"] = pa.array([model_name] * n_cells, pa.string())
    columns[X_COLUMN] = pa.array(centers[:, 0].astype(np.float64))
    columns[Y_COLUMN] = pa.array(centers[:, 1].astype(np.float64))
    features = np.ascontiguousarray(features, dtype=np.float32)
    for index, name in enumerate(feature_columns(feature_prefix, features.shape[1])):
        columns[name] = pa.array(features[:, index])
    return pa.table(columns)


def write_cells(
    path: Path,
    features: F32Array,
    centers: F64Array,
    *,
    metadata: Mapping[str, str],
    model_name: str,
    feature_prefix: str = "efficientnet",
) -> Path:
    """Write cells to ``.parquet``, ``.csv`` or DeepProfiler-style ``.npz`` (chosen by extension)."""
    path = Path(path)
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npz":
        meta = {key: str(value) for key, value in metadata.items()}
        meta["Metadata_Model"] = feature_prefix
        # DeepProfiler's layout: features (N, D) float32, metadata (a pickled dict), locations (N, 2).
        np.savez_compressed(
            path,
            features=np.asarray(features, np.float32),
            metadata=np.array(meta, dtype=object),
            locations=np.asarray(centers, np.float64),
        )
        return path
    table = cells_table(features, centers, metadata=metadata, model_name=model_name, feature_prefix=feature_prefix)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, path)
    elif suffix == ".csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, path)
    else:
        raise InputError(f"unknown output format {path.name}: use .parquet, .csv or .npz")
    return path

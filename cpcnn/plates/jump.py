"""Well profiles in the layout of JUMP's released Cell Painting CNN-1 profiles, so a lab's plates sit next to
JUMP's (cpg0016) and one can be queried against the other; and JUMP's files read back as cpcnn profile tables.

The layout, and where it was confirmed (public sources, read as text; no Gallery file was opened here):

- Path: ``{source}/workspace_dl/profiles/cpcnn_zenodo_7114558/{batch}/{plate}/{plate}.parquet`` below the
  project (``s3://cellpainting-gallery/cpg0016-jump/``). Confirmed by the Gallery's own folder spec
  (broadinstitute/cellpainting-gallery ``documentation/data_structure.md``, ``workspace_dl/profiles``: one
  folder per model, then batch, then ``{plate}/{plate}.parquet``) and by JUMP's profiling recipe, which syncs
  ``{source}/workspace_dl/profiles/cpcnn_zenodo_7114558`` and reads
  ``{Metadata_Batch}/{Metadata_Plate}/{Metadata_Plate}.parquet`` from it (broadinstitute/jump-profiling-recipe
  ``download_data.sh``, ``preprocessing/metadata.py:build_path``).
- Columns: one row per well, ``source``, ``batch``, ``plate``, ``well`` (text) and ``all_emb``, the
  672-value CNN-1 embedding as one list column. Not in an official spec: two independent public notes
  that opened the files report exactly these five columns and 672 values (384 rows for a 384-well plate),
  and a public pipeline reads ``source, batch, plate, well, all_emb`` from them. JUMP's single-cell
  writer stores embeddings as a fixed-size list of float32 (``pyarrow.list_(float32, list_size=N)``, in the
  Terra "embedding_creation" notebook), which is the type written here; the list type of the well files
  themselves was not confirmed, and the reader accepts either.
- Not confirmed: how JUMP averaged cells into wells (one note says the mean of single-cell embeddings;
  cpcnn's ``wells.parquet`` is the mean of site medians); the file's Parquet options. JUMP keeps
  perturbation annotations out of these files (``metadata/well.csv.gz`` etc. join on source, plate and well),
  so platemap columns are not written either.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cpcnn._types import FEATURE_PREFIX
from cpcnn.errors import InputError, PayloadTooLarge
from cpcnn.profiles.tables import duplicate_names, feature_columns

#: JUMP's folder for Cell Painting CNN-1 profiles (the model's Zenodo record).
MODEL_FOLDER = "cpcnn_zenodo_7114558"
#: JUMP's embedding column: the whole CNN-1 feature vector as one list.
EMBEDDING_COLUMN = "all_emb"
#: JUMP's key columns -> cpcnn's metadata columns.
KEY_COLUMNS: dict[str, str] = {
    "source": "Metadata_Source",
    "batch": "Metadata_Batch",
    "plate": "Metadata_Plate",
    "well": "Metadata_Well",
}
#: Used when the wells table has no Metadata_Source / Metadata_Batch (JUMP's sources are ``source_1`` ...).
DEFAULT_SOURCE = "source_local"
DEFAULT_BATCH = "local"
#: Files one directory read may gather (all of cpg0016 is a few thousand plates).
MAX_FILES = 20_000
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def jump_well_path(out_dir: Path, source: str, batch: str, plate: str) -> Path:
    """``{out_dir}/{source}/workspace_dl/profiles/cpcnn_zenodo_7114558/{batch}/{plate}/{plate}.parquet``."""
    parts = [_safe(source, "source"), _safe(batch, "batch"), _safe(plate, "plate")]
    return Path(out_dir) / parts[0] / "workspace_dl" / "profiles" / MODEL_FOLDER / parts[1] / parts[2] / f"{parts[2]}.parquet"


def _safe(name: str, what: str) -> str:
    """A folder name: JUMP's names are plain; anything that could leave the folder is replaced."""
    cleaned = _UNSAFE.sub("_", name)
    if not cleaned or cleaned in (".", ".."):
        raise InputError(f"{what} name {name!r} cannot name a folder")
    return cleaned


def _ordered_features(wells: pd.DataFrame) -> list[str]:
    """Feature columns in embedding order: ``<prefix>_<i>`` sorted by ``i`` (0, 1, ..., N-1, no gaps)."""
    names = feature_columns(wells)
    if not names:
        raise InputError("the wells table has no feature columns to write")
    parsed = [(name.rsplit("_", 1)[0], name.rsplit("_", 1)[-1]) for name in names]
    prefixes = {prefix for prefix, _ in parsed}
    if len(prefixes) != 1 or not all(index.isdigit() for _, index in parsed):
        raise InputError(f"JUMP layout needs features named <prefix>_0..N-1 from one model; found {', '.join(names[:4])}")
    order = sorted(range(len(names)), key=lambda i: int(parsed[i][1]))
    if [int(parsed[i][1]) for i in order] != list(range(len(names))):
        raise InputError(f"JUMP layout needs features {parsed[0][0]}_0..{len(names) - 1} without gaps")
    return [names[i] for i in order]


def write_jump_wells(
    wells: pd.DataFrame, out_dir: Path, *, source: str | None = None, batch: str | None = None
) -> list[Path]:
    """One Parquet per plate in JUMP's CNN-1 well-profile layout (see the module notes) -> the files written.

    ``source``/``batch`` default to the table's ``Metadata_Source``/``Metadata_Batch`` columns, else
    ``source_local``/``local``. Wells must be unique per plate.
    """
    duplicated_names = duplicate_names([str(c) for c in wells.columns])
    if duplicated_names:
        raise InputError(f"the wells table has duplicate column names: {', '.join(duplicated_names[:5])}")
    for column in ("Metadata_Plate", "Metadata_Well"):
        if column not in wells.columns:
            raise InputError(f"the wells table lacks {column}; it has {', '.join(map(str, wells.columns[:10]))}")
    features = _ordered_features(wells)
    values = wells[features].to_numpy(dtype=np.float32)
    keys = pd.DataFrame(
        {
            "source": _key(wells, "Metadata_Source", source, DEFAULT_SOURCE),
            "batch": _key(wells, "Metadata_Batch", batch, DEFAULT_BATCH),
            "plate": wells["Metadata_Plate"].astype(str).to_numpy(),
            "well": wells["Metadata_Well"].astype(str).to_numpy(),
        }
    )
    duplicated = keys.duplicated(["source", "plate", "well"])
    if duplicated.any():
        row = keys[duplicated].iloc[0]
        raise InputError(f"well {row['well']} of plate {row['plate']} appears more than once in the wells table")
    written: list[Path] = []
    for (source_name, batch_name, plate), rows in keys.groupby(["source", "batch", "plate"], sort=True).indices.items():
        path = jump_well_path(Path(out_dir), source_name, batch_name, plate)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_plate_table(keys.iloc[rows], values[rows]), path)
        written.append(path)
    return written


def _key(wells: pd.DataFrame, column: str, given: str | None, default: str) -> np.ndarray:
    if given is not None:
        return np.full(len(wells), given, dtype=object)
    if column in wells.columns:
        return wells[column].astype(str).to_numpy()
    return np.full(len(wells), default, dtype=object)


def _plate_table(keys: pd.DataFrame, values: np.ndarray) -> pa.Table:
    n_rows, width = values.shape
    flat = pa.array(np.ascontiguousarray(values).reshape(-1), pa.float32())
    embedding = pa.FixedSizeListArray.from_arrays(flat, width)
    columns = {name: pa.array(keys[name].tolist(), pa.string()) for name in KEY_COLUMNS}
    return pa.table({**columns, EMBEDDING_COLUMN: embedding})


def is_jump_table(schema: pa.Schema) -> bool:
    """True for a table with JUMP's key columns and at least one embedding list column (``*_emb``)."""
    names = set(schema.names)
    return {"plate", "well"} <= names and any(_is_embedding(field) for field in schema)


def _is_embedding(field: pa.Field) -> bool:
    return field.name.endswith("_emb") and (pa.types.is_list(field.type) or pa.types.is_fixed_size_list(field.type)
                                            or pa.types.is_large_list(field.type))


def read_jump_wells(path: Path) -> pd.DataFrame:
    """A JUMP well-profile Parquet, or a folder of them (any depth), as a cpcnn profile table.

    Keys become ``Metadata_Source/Batch/Plate/Well``; ``all_emb`` becomes ``efficientnet_0..671``
    (float32), any other ``X_emb`` list becomes ``X_emb_0..``. Files are read in path order.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.rglob("*.parquet"))
        if not files:
            raise InputError(f"no .parquet files below {path}")
        if len(files) > MAX_FILES:
            raise PayloadTooLarge(f"{path}: more than {MAX_FILES} Parquet files is over the limit of {MAX_FILES}")
        tables = [_read_one(file) for file in files]
        _check_same_columns(tables, files)
        return pd.concat(tables, ignore_index=True)
    if not path.is_file():
        raise InputError(f"JUMP profiles {path} do not exist")
    return _read_one(path)


def _check_same_columns(tables: Sequence[pd.DataFrame], files: Sequence[Path]) -> None:
    first = list(tables[0].columns)
    for table, file in zip(tables[1:], files[1:], strict=True):
        if list(table.columns) != first:
            raise InputError(f"{file} has other columns than {files[0]} (different model or layout)")


def _read_one(path: Path) -> pd.DataFrame:
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path}: unreadable Parquet file ({str(exc).splitlines()[0][:160]})") from exc
    if not is_jump_table(table.schema):
        raise InputError(
            f"{path} is not in JUMP's layout (needs plate, well and an *_emb list column); it has "
            f"{', '.join(table.schema.names[:10])}"
        )
    meta: dict[str, np.ndarray] = {}
    blocks: list[pd.DataFrame] = []
    for field in table.schema:
        column = table.column(field.name)
        if _is_embedding(field):
            prefix = FEATURE_PREFIX if field.name == EMBEDDING_COLUMN else field.name
            blocks.append(_expand(column, prefix, f"{path}: {field.name}"))
        else:
            meta[KEY_COLUMNS.get(field.name, field.name)] = column.to_numpy(zero_copy_only=False)
    return pd.concat([pd.DataFrame(meta), *blocks], axis=1)


def _expand(column: pa.ChunkedArray, prefix: str, what: str) -> pd.DataFrame:
    """A list column -> (rows, width) float32 block ``{prefix}_0..``; rows of different length are an error."""
    array = column.combine_chunks()
    if array.null_count:
        raise InputError(f"{what} is missing in {array.null_count} row(s)")
    lengths = np.asarray(pc.list_value_length(array).to_numpy(zero_copy_only=False))
    width = int(lengths[0]) if len(lengths) else 0
    if len(lengths) and (lengths != width).any():
        raise InputError(f"{what}: rows hold {sorted(set(lengths.tolist()))[:3]} values; all must hold the same number")
    flat = np.asarray(array.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    values = flat.reshape(len(lengths), width)
    return pd.DataFrame(values, columns=[f"{prefix}_{i}" for i in range(width)])

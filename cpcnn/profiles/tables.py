"""Profile tables: ``Metadata_*`` columns plus numeric feature columns, read from and written to disk.

A profile table is a pandas DataFrame. Columns named ``Metadata_*`` describe a row (plate, well,
treatment, annotations); every other column is a feature unless an explicit feature list is given.
Features are float32. Readers accept CSV (``.csv``, ``.csv.gz``), Parquet (``.parquet``, ``.pq``) and
DeepProfiler output folders (``*.npz`` below a folder, or a single ``.npz``).
"""

from __future__ import annotations

import csv
import gzip
import io
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from cpcnn._types import F32Array
from cpcnn.errors import InputError
from cpcnn.profiles import _npz

METADATA_PREFIX = "Metadata_"
#: Number of single cells behind an aggregated row.
COUNT_CELLS = "Metadata_Count_Cells"
#: Number of input rows (cells, sites, wells) averaged into an aggregated row.
COUNT_ROWS = "Metadata_Count_Rows"

TableFormat = Literal["csv", "parquet", "npz"]
PathLike = str | Path
#: Rows per Parquet row group written by ``write_profiles``: small groups stream in bounded memory.
ROW_GROUP_ROWS = 65_536
_COLUMN_BLOCK = 64


def table_format(path: PathLike) -> TableFormat:
    """Format of a profile source from its name; a folder is a DeepProfiler output folder."""
    path = Path(path)
    name = path.name.lower()
    if path.is_dir() or name.endswith(".npz"):
        return "npz"
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    raise InputError(f"{path}: unknown table format (use .csv, .csv.gz, .parquet or a folder of .npz files)")


def _existing(path: PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    return path


def _as_paths(paths: PathLike | Sequence[PathLike]) -> list[Path]:
    items = [paths] if isinstance(paths, str | Path) else list(paths)
    if not items:
        raise InputError("no input tables given")
    return [_existing(p) for p in items]


def metadata_columns(table: pd.DataFrame) -> list[str]:
    """Names of the ``Metadata_*`` columns, in table order."""
    return [str(c) for c in table.columns if str(c).startswith(METADATA_PREFIX)]


def _check_numeric(table: pd.DataFrame, names: Sequence[str]) -> None:
    bad = [n for n in names if not pd.api.types.is_numeric_dtype(table[n]) or table[n].dtype == bool]
    if bad:
        shown = ", ".join(bad[:5]) + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else "")
        raise InputError(
            f"non-numeric feature columns: {shown}; prefix descriptive columns with "
            f"'{METADATA_PREFIX}' or pass an explicit feature list"
        )


def feature_columns(table: pd.DataFrame, features: Sequence[str] | None = None) -> list[str]:
    """The feature column names: ``features`` if given (checked), else every non-``Metadata_*`` column."""
    if features is None:
        names = [str(c) for c in table.columns if not str(c).startswith(METADATA_PREFIX)]
    else:
        names = list(features)
        missing = [n for n in names if n not in table.columns]
        if missing:
            raise InputError(f"feature columns not in the table: {', '.join(missing[:5])}")
    if not names:
        raise InputError("the table has no feature columns (every column is Metadata_*)")
    _check_numeric(table, names)
    return names


def check_same_features(found: Sequence[str], expected: Sequence[str], *, what: str) -> None:
    """Raise InputError naming missing and unexpected features unless both lists hold the same names."""
    missing = [n for n in expected if n not in set(found)]
    extra = [n for n in found if n not in set(expected)]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {', '.join(missing[:3])})")
        if extra:
            parts.append(f"unexpected {len(extra)} (e.g. {', '.join(extra[:3])})")
        raise InputError(f"feature mismatch with {what}: " + "; ".join(parts))


def feature_matrix(table: pd.DataFrame, features: Sequence[str]) -> F32Array:
    """(rows, len(features)) float32 C-contiguous copy of the named columns, in the given order."""
    _check_numeric(table, features)
    return np.ascontiguousarray(table.loc[:, list(features)].to_numpy(dtype=np.float32))


def check_finite(values: np.ndarray, names: Sequence[str], *, what: str, allow_nan: bool = True) -> None:
    """(rows, len(names)) values -> InputError naming the columns holding +-inf (and NaN unless ``allow_nan``).

    Infinities poison every sum they enter (a mean, a covariance, a norm), so they are refused where
    they come in rather than surfacing later as NaN results or a linear-algebra error.
    """
    bad = np.isinf(values) if allow_nan else ~np.isfinite(values)
    columns = np.flatnonzero(bad.any(axis=0))
    if len(columns):
        shown = ", ".join(str(names[i]) for i in columns[:5])
        more = f" (+{len(columns) - 5} more)" if len(columns) > 5 else ""
        kind = "infinite values" if allow_nan else "NaN or infinite values"
        raise InputError(
            f"{what}: {kind} in features {shown}{more}; every feature must be finite"
            + (" (or NaN where missing)" if allow_nan else "")
        )


def _with_float32_features(table: pd.DataFrame, features: Sequence[str]) -> pd.DataFrame:
    """Cast features to float32 in one block, keeping column order."""
    cast = {n: np.float32 for n in features if table[n].dtype != np.float32}
    return table.astype(cast) if cast else table


def duplicate_names(names: Sequence[str]) -> list[str]:
    """Names that occur more than once, sorted (linear time: tables can have 20,000+ columns)."""
    return sorted(name for name, count in Counter(names).items() if count > 1)


CsvSource = Path | bytes


def _open_csv(source: CsvSource) -> BinaryIO:
    if isinstance(source, bytes):
        return io.BytesIO(source)
    if source.name.lower().endswith(".gz"):
        return gzip.open(source, "rb")  # type: ignore[return-value]
    return source.open("rb")


def csv_header(source: CsvSource, *, what: str) -> list[str]:
    """The header row's names exactly as written (pandas would rename ``a``, ``a`` to ``a``, ``a.1``).

    Duplicate names are an InputError: which of two same-named columns is meant cannot be known.
    """
    with _open_csv(source) as handle:
        text = io.TextIOWrapper(handle, encoding="utf-8-sig", newline="")
        try:
            header = next(csv.reader(text), None)
        except csv.Error as exc:
            raise InputError(f"{what}: unreadable CSV header ({exc})") from exc
    if not header:
        raise InputError(f"{what}: the table is empty (no header row)")
    duplicated = duplicate_names(header)
    if duplicated:
        raise InputError(f"{what}: duplicate column names: {', '.join(duplicated[:5])}")
    return header


def check_csv_rows(source: CsvSource, n_columns: int, *, what: str) -> None:
    """InputError unless every row has exactly ``n_columns`` fields (pandas fills or shifts ragged rows)."""
    ragged: list[int] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        ragged.append(row.actual_columns)
        return "skip"

    names = [f"c{i}" for i in range(n_columns)]
    with _open_csv(source) as handle:
        reader = pacsv.open_csv(
            handle,
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=1, use_threads=False),
            parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(include_columns=names[:1], column_types={names[0]: pa.binary()}),
        )
        for _ in reader:
            if ragged:
                break
    if ragged:
        raise InputError(
            f"{what}: a row has {ragged[0]} fields but the header names {n_columns} columns (ragged CSV)"
        )


def read_csv_table(source: CsvSource, *, what: str) -> pd.DataFrame:
    """CSV (path, ``.csv.gz`` path or bytes) -> DataFrame; duplicate header names or ragged rows are errors."""
    header = csv_header(source, what=what)
    try:
        check_csv_rows(source, len(header), what=what)
    except pa.ArrowInvalid as exc:
        raise InputError(f"{what}: unreadable CSV ({str(exc).splitlines()[0][:200]})") from exc
    with _open_csv(source) as handle:
        return pd.read_csv(handle, encoding="utf-8", low_memory=False, index_col=False)


def _read_one(path: Path) -> pd.DataFrame:
    fmt = table_format(path)
    try:
        if fmt == "csv":
            return read_csv_table(path, what=str(path))
        if fmt == "parquet":
            return pd.read_parquet(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{path}: unreadable {fmt} table ({exc})") from exc
    if path.is_file():
        return _npz.read_site(path, path.parent)
    return pd.concat(list(_npz.iter_sites(path)), ignore_index=True)


def read_profiles(
    paths: PathLike | Sequence[PathLike], *, features: Sequence[str] | None = None
) -> pd.DataFrame:
    """Read one or more profile tables into one DataFrame with float32 features.

    Several inputs must share the same feature names (their order follows the first input);
    ``Metadata_*`` columns are unioned (missing values are NaN).
    """
    tables: list[pd.DataFrame] = []
    for path in _as_paths(paths):
        table = _read_one(path)
        names = feature_columns(table, features)
        if tables:
            check_same_features(
                names, feature_columns(tables[0], features), what=f"the first input (reading {path})"
            )
        tables.append(_with_float32_features(table, names))
    if len(tables) == 1:
        return tables[0]
    merged = pd.concat(tables, ignore_index=True)
    names = feature_columns(tables[0], features)
    meta = [c for c in merged.columns if c not in set(names)]
    return merged.loc[:, meta + names]


def write_profiles(table: pd.DataFrame, path: PathLike) -> Path:
    """Write a table as CSV (``.csv``/``.csv.gz``) or else Parquet; creates parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.lower().endswith((".csv", ".csv.gz")):
        table.to_csv(path, index=False)
    else:
        # Dictionary pages only for Metadata: float features never repeat, and dictionary attempts
        # make the file ~1.5x larger and slower to read.
        meta = [c for c in metadata_columns(table) if c in table.columns]
        table.to_parquet(path, index=False, row_group_size=ROW_GROUP_ROWS, use_dictionary=meta or False)
    return path


def table_columns(path: PathLike) -> list[str]:
    """Column names of a profile source without reading its rows (first file for npz folders)."""
    path = _existing(path)
    fmt = table_format(path)
    if fmt == "parquet":
        return list(pq.read_schema(path).names)
    if fmt == "csv":
        return csv_header(path, what=str(path))
    first = path if path.is_file() else _npz.npz_files(path)[0]
    return [str(c) for c in _npz.read_site(first, path if path.is_dir() else first.parent).columns]


def _parquet_batches(
    path: Path, keys: list[str], features: list[str], batch_rows: int
) -> Iterator[tuple[pd.DataFrame, F32Array]]:
    """One row group at a time, features read 64 columns at a time into one float32 block.

    Reading column subsets keeps pyarrow's decoding buffers small: peak memory is about one row
    group of float32 features, where reading all columns at once costs several times that.
    """
    reader = pq.ParquetFile(path, pre_buffer=False)
    schema = reader.schema_arrow
    bad = [
        n
        for n in features
        if not (pa.types.is_floating(schema.field(n).type) or pa.types.is_integer(schema.field(n).type))
    ]
    if bad:
        raise InputError(f"{path}: non-numeric feature columns: {', '.join(bad[:5])}")
    for group in range(reader.num_row_groups):
        n_rows = reader.metadata.row_group(group).num_rows
        values = np.empty((n_rows, len(features)), dtype=np.float32)
        for lo in range(0, len(features), _COLUMN_BLOCK):
            block = reader.read_row_group(group, columns=features[lo : lo + _COLUMN_BLOCK], use_threads=False)
            stacked = np.stack([column.to_numpy().astype(np.float32, copy=False) for column in block.columns])
            values[:, lo : lo + len(stacked)] = stacked.T
            del block, stacked
        key_table = reader.read_row_group(group, columns=keys).to_pandas()
        for lo in range(0, n_rows, batch_rows):
            yield key_table.iloc[lo : lo + batch_rows].reset_index(drop=True), values[lo : lo + batch_rows]


def iter_feature_batches(
    path: PathLike, *, keys: Sequence[str], features: Sequence[str], batch_rows: int
) -> Iterator[tuple[pd.DataFrame, F32Array]]:
    """Stream a profile source as (key columns, (rows, D) float32 features) batches in file order.

    Memory: Parquet, one row group of features (``write_profiles`` writes 65,536-row groups); CSV,
    ``batch_rows`` rows; npz folders, one site. Only the named columns are read.
    """
    path = _existing(path)
    fmt = table_format(path)
    keys, features = list(keys), list(features)
    if fmt == "parquet":
        yield from _parquet_batches(path, keys, features, batch_rows)
        return
    if fmt == "csv":
        check_csv_rows(path, len(csv_header(path, what=str(path))), what=str(path))
        with pd.read_csv(path, usecols=[*keys, *features], chunksize=batch_rows, index_col=False) as reader:
            for chunk in reader:
                yield chunk.loc[:, keys].reset_index(drop=True), feature_matrix(chunk, features)
        return
    sites = iter([_npz.read_site(path, path.parent)]) if path.is_file() else _npz.iter_sites(path)
    for table in sites:
        missing = [c for c in [*keys, *features] if c not in table.columns]
        if missing:
            raise InputError(f"{path}: columns not found in a site file: {', '.join(missing[:5])}")
        yield table.loc[:, keys], feature_matrix(table, features)

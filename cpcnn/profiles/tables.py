"""Profile tables: ``Metadata_*`` columns plus numeric feature columns, read from and written to disk.

A profile table is a pandas DataFrame. Columns named ``Metadata_*`` describe a row (plate, well,
treatment, annotations, cell coordinates). ``feature_columns`` is the one rule that says which
columns are features: an explicit selection (names and/or glob patterns such as ``efficientnet_*``),
or by default every numeric column that is not metadata. Cell coordinate and object-number columns
without the prefix (``Nuclei_Location_Center_X/Y``, ``Location_Center_X/Y``, ``ObjectNumber``, as
written by earlier cpcnn versions and by CellProfiler) are metadata too: a coordinate must never enter a
profile. Features are float32. Readers accept CSV (``.csv``, ``.csv.gz``), Parquet (``.parquet``,
``.pq``) and DeepProfiler output folders (``*.npz`` below a folder, or a single ``.npz``).
"""

from __future__ import annotations

import csv
import fnmatch
import gzip
import io
import logging
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from cpcnn._types import F32Array
from cpcnn.errors import InputError, PayloadTooLarge
from cpcnn.profiles import _npz

logger = logging.getLogger(__name__)

METADATA_PREFIX = "Metadata_"
#: Unprefixed columns that describe a cell, not its phenotype: read as metadata (with a warning).
LEGACY_METADATA: tuple[str, ...] = (
    "Nuclei_Location_Center_X",
    "Nuclei_Location_Center_Y",
    "Location_Center_X",
    "Location_Center_Y",
    "ObjectNumber",
)
#: A feature selection: None (the default rule), names and glob patterns, or one comma-separated string.
FeatureSelection = str | Sequence[str] | None
_GLOB_CHARS = frozenset("*?[")
#: Patterns per selection: each is matched against every column, so their number bounds the work.
MAX_PATTERNS = 100
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


def is_metadata(name: str) -> bool:
    """True for columns that describe a row: ``Metadata_*`` and the unprefixed ``LEGACY_METADATA``."""
    return name.startswith(METADATA_PREFIX) or name in LEGACY_METADATA


def metadata_columns(table: pd.DataFrame) -> list[str]:
    """Names of the metadata columns (``is_metadata``), in table order."""
    return [str(c) for c in table.columns if is_metadata(str(c))]


def _is_numeric(dtype: object) -> bool:
    return bool(pd.api.types.is_numeric_dtype(dtype)) and not pd.api.types.is_bool_dtype(dtype)


def column_kinds(table: pd.DataFrame | Mapping[str, bool]) -> dict[str, bool]:
    """Column name -> numeric (not bool), in table order: all the feature rule needs to know.

    A mapping is taken as already made (``table_kinds`` makes one for a file without reading it).
    One pass over the dtypes, each distinct dtype checked once: per-column access is slow.
    """
    if not isinstance(table, pd.DataFrame):
        return {str(name): bool(numeric) for name, numeric in table.items()}
    seen: dict[object, bool] = {}
    numeric: dict[str, bool] = {}
    for column, dtype in zip(table.columns.tolist(), table.dtypes.tolist(), strict=True):
        if dtype not in seen:
            seen[dtype] = _is_numeric(dtype)
        numeric[str(column)] = seen[dtype]
    return numeric


def _check_numeric(table: pd.DataFrame | Mapping[str, bool], names: Sequence[str]) -> None:
    numeric = column_kinds(table)
    bad = [n for n in names if not numeric.get(n, False)]
    if bad:
        shown = ", ".join(bad[:5]) + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else "")
        raise InputError(
            f"non-numeric feature columns: {shown}; features are numbers (descriptive columns are "
            f"named '{METADATA_PREFIX}*')"
        )


def parse_feature_selection(features: FeatureSelection) -> list[str] | None:
    """None, or names/globs as a sequence and/or comma-separated strings -> a list of names/globs (or None)."""
    if features is None:
        return None
    items = [features] if isinstance(features, str) else [str(f) for f in features]
    names = [name.strip() for item in items for name in item.split(",") if name.strip()]
    if not names:
        raise InputError("the feature selection is empty: name feature columns or patterns such as efficientnet_*")
    return names


def _expand(columns: Sequence[str], selection: Sequence[str]) -> list[str]:
    """Names and globs -> column names, in selection order (a glob's matches in table order), no repeats.

    A name present in the table is taken literally; otherwise an item holding ``*``, ``?`` or ``[`` is
    a pattern over the non-metadata columns and must match at least one.
    """
    present = set(columns)
    patterns = [item for item in selection if item not in present and _GLOB_CHARS.intersection(item)]
    if len(patterns) > MAX_PATTERNS:
        raise InputError(f"{len(patterns)} feature patterns is over the limit of {MAX_PATTERNS}; list names instead")
    chosen: dict[str, None] = {}
    missing: list[str] = []
    for item in selection:
        if item in present:
            chosen.setdefault(item, None)
        elif _GLOB_CHARS.intersection(item):
            matches = [c for c in columns if not is_metadata(c) and fnmatch.fnmatchcase(c, item)]
            if not matches:
                missing.append(item)
            chosen.update(dict.fromkeys(matches))
        else:
            missing.append(item)
    if missing:
        raise InputError(f"feature columns not in the table: {', '.join(missing[:5])}")
    named_meta = [n for n in chosen if n.startswith(METADATA_PREFIX)]
    if named_meta:
        raise InputError(
            f"{METADATA_PREFIX}* columns describe rows and cannot be features ({', '.join(named_meta[:3])})"
        )
    return list(chosen)


def feature_columns(table: pd.DataFrame | Mapping[str, bool], features: FeatureSelection = None) -> list[str]:
    """The feature column names: the ``features`` selection if given (names and globs, checked numeric),
    else every numeric column that is not metadata (``is_metadata``), in table order.

    ``table`` is a DataFrame or its ``column_kinds``. This is the one place that decides what a feature is.
    """
    kinds = column_kinds(table)
    selection = parse_feature_selection(features)
    if selection is None:
        names = [c for c, numeric in kinds.items() if numeric and not is_metadata(c)]
    else:
        names = _expand(list(kinds), selection)
    if not names:
        raise InputError("the table has no feature columns (no numeric column outside Metadata_*)")
    _check_numeric(kinds, names)
    return names


def unselected_features(table: pd.DataFrame | Mapping[str, bool], names: Sequence[str]) -> list[str]:
    """Numeric non-metadata columns outside ``names``: a table derived from a feature selection drops
    them, so that its default features are exactly the selection."""
    chosen = set(names)
    return [c for c, numeric in column_kinds(table).items() if numeric and c not in chosen and not is_metadata(c)]


def ignored_columns(
    table: pd.DataFrame | Mapping[str, bool], features: FeatureSelection = None
) -> tuple[list[str], list[str]]:
    """(unprefixed metadata columns present, non-numeric non-metadata columns left out by the default rule).

    What a reader warns about, once per read: both are columns a user may have meant otherwise.
    """
    kinds = column_kinds(table)
    legacy = [c for c in kinds if c in LEGACY_METADATA]
    if features is not None:
        return legacy, []
    return legacy, [c for c, numeric in kinds.items() if not numeric and not is_metadata(c)]


def warn_ignored_columns(legacy: Sequence[str], skipped: Sequence[str], *, source: str) -> None:
    """Log one warning naming unprefixed coordinate columns read as metadata and skipped text columns."""
    if legacy:
        logger.warning(
            "%s: reading %s as metadata, not features (cell coordinates and object numbers; cpcnn now "
            "writes them as Metadata_Nuclei_Location_Center_X/Y and Metadata_ObjectNumber)",
            source,
            ", ".join(dict.fromkeys(legacy)),
        )
    if skipped:
        shown = list(dict.fromkeys(skipped))
        logger.warning(
            "%s: non-numeric columns %s are neither Metadata_* nor features and are not used as features",
            source,
            ", ".join(shown[:5]) + (f" (+{len(shown) - 5} more)" if len(shown) > 5 else ""),
        )


def check_same_features(found: Sequence[str], expected: Sequence[str], *, what: str) -> None:
    """Raise InputError naming missing and unexpected features unless both lists hold the same names."""
    found_set, expected_set = set(found), set(expected)
    missing = [n for n in expected if n not in found_set]
    extra = [n for n in found if n not in expected_set]
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
        except (csv.Error, UnicodeDecodeError, OSError, EOFError, zlib.error) as exc:  # not text, a broken .gz
            raise InputError(f"{what}: unreadable CSV header ({str(exc)[:160]})") from exc
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


def read_csv_table(
    source: CsvSource,
    *,
    what: str,
    columns: Sequence[str] | None = None,
    text_columns: Sequence[str] = (),
    max_rows: int | None = None,
) -> pd.DataFrame:
    """CSV (path, ``.csv.gz`` path or bytes) -> DataFrame; duplicate header names or ragged rows are errors.

    ``columns`` reads only those (memory stays bounded on wide tables), ``text_columns`` are kept as
    written (``"01"`` stays ``"01"``), and more than ``max_rows`` rows is PayloadTooLarge.
    """
    header = csv_header(source, what=what)
    try:
        check_csv_rows(source, len(header), what=what)
    except pa.ArrowInvalid as exc:
        raise InputError(f"{what}: unreadable CSV ({str(exc).splitlines()[0][:200]})") from exc
    with _open_csv(source) as handle:
        table = pd.read_csv(
            handle,
            encoding="utf-8",
            low_memory=columns is not None,  # chunked parsing keeps memory to the chosen columns
            index_col=False,
            usecols=None if columns is None else list(columns),
            dtype={name: str for name in text_columns} or None,
            nrows=None if max_rows is None else max_rows + 1,
        )
    if max_rows is not None and len(table) > max_rows:
        raise PayloadTooLarge(f"{what}: more than {max_rows} rows is over the limit of {max_rows}")
    return table


def _read_one(path: Path) -> pd.DataFrame:
    fmt = table_format(path)
    try:
        if fmt == "csv":
            return read_csv_table(path, what=str(path))
        if fmt == "parquet":
            return _read_parquet(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{path}: unreadable {fmt} table ({exc})") from exc
    if path.is_file():
        return _npz.read_site(path, path.parent)
    return pd.concat(list(_npz.iter_sites(path)), ignore_index=True)


def _read_parquet(path: Path) -> pd.DataFrame:
    """A Parquet profile table; JUMP's released deep-learning profiles (one ``*_emb`` list column) are expanded
    into one feature column per value by ``cpcnn.plates.jump``, which owns that layout."""
    from cpcnn.plates.jump import is_jump_table, read_jump_wells

    if is_jump_table(pq.read_schema(path)):
        return read_jump_wells(path)
    return pd.read_parquet(path)


def read_profiles(paths: PathLike | Sequence[PathLike], *, features: FeatureSelection = None) -> pd.DataFrame:
    """Read one or more profile tables into one DataFrame with float32 features (``feature_columns``).

    Several inputs must share the same feature names (their order follows the first input);
    metadata columns are unioned (missing values are NaN). Unprefixed coordinate columns and skipped
    text columns are named in one warning per read.
    """
    tables: list[pd.DataFrame] = []
    legacy: list[str] = []
    skipped: list[str] = []
    inputs = _as_paths(paths)
    for path in inputs:
        table = _read_one(path)
        names = feature_columns(table, features)
        if tables:
            check_same_features(
                names, feature_columns(tables[0], features), what=f"the first input (reading {path})"
            )
        found = ignored_columns(table, features)
        legacy += found[0]
        skipped += found[1]
        tables.append(_with_float32_features(table, names))
    warn_ignored_columns(legacy, skipped, source=str(inputs[0]) + (f" (+{len(inputs) - 1})" if len(inputs) > 1 else ""))
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
        table = _one_type_per_metadata_column(table, meta)
        table.to_parquet(path, index=False, row_group_size=ROW_GROUP_ROWS, use_dictionary=meta or False)
    return path


def _one_type_per_metadata_column(table: pd.DataFrame, meta: Sequence[str]) -> pd.DataFrame:
    """Parquet holds one type per column: metadata mixing numbers and text (e.g. sites 3 and "" from
    cells embedded with and without ``--site``) is written as text, missing values kept missing."""
    mixed = [
        c for c in meta
        if table[c].dtype == object and pd.api.types.infer_dtype(table[c], skipna=True).startswith("mixed")
    ]
    if not mixed:
        return table
    table = table.copy(deep=False)
    for column in mixed:
        values = table[column]
        table[column] = values.where(values.isna(), values.astype(str))
    return table


def table_kinds(path: PathLike, *, sample_rows: int = 1000) -> dict[str, bool]:
    """``column_kinds`` of a profile source without reading it: Parquet from its schema, CSV from its
    first ``sample_rows`` rows, npz folders from the first site."""
    path = _existing(path)
    fmt = table_format(path)
    if fmt == "parquet":
        schema = pq.read_schema(path)
        return {
            field.name: (pa.types.is_integer(field.type) or pa.types.is_floating(field.type)
                         or pa.types.is_decimal(field.type))
            for field in schema
        }
    if fmt == "csv":
        csv_header(path, what=str(path))  # duplicate names are refused before pandas renames them
        return column_kinds(pd.read_csv(path, nrows=sample_rows, index_col=False))
    first = path if path.is_file() else _npz.npz_files(path)[0]
    return column_kinds(_npz.read_site(first, path if path.is_dir() else first.parent))


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

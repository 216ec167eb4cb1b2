"""Uploaded bytes -> a profile table: detect the format, bound the size, check the features.

The format comes from the bytes (a file name only has to agree): Parquet starts with ``PAR1``, gzip
with 1f 8b (CSV inside), anything else must be UTF-8 CSV. Sizes are bounded before anything is
decoded: gzip is inflated with a byte cap, a CSV's rows x columns are counted from its newlines and
header, and a Parquet file's footer (rows, columns, uncompressed size, decoded string bytes) is
checked before its data is read. Bytes that decode as none of these are 415;
a decodable table that is not a profile table (no rows, non-numeric or infinite features, unknown
feature names) is 422. The stored table holds exactly the ``Metadata_*`` columns and the features,
as float32, so every later operation sees the same features without being told again.
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from collections.abc import Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from cpcnn.service.config import Limits
from cpcnn.service.profile_store import artifact_id

from cpcnn.errors import InputError, PayloadTooLarge, UnsupportedMedia
from cpcnn.profiles.tables import (
    METADATA_PREFIX,
    check_finite,
    csv_header,
    duplicate_names,
    feature_columns,
    feature_matrix,
    ignored_columns,
    metadata_columns,
    read_csv_table,
    warn_ignored_columns,
)

_PARQUET_MAGIC = b"PAR1"
_GZIP_MAGIC = b"\x1f\x8b"
_GZIP_CHUNK = 1 << 20


def table_id_for(data: bytes, features: Sequence[str] | None) -> str:
    """Same bytes and feature list, same table id."""
    return artifact_id("table", json.dumps(None if features is None else list(features)), data)


def split_names(values: Sequence[str] | None) -> list[str] | None:
    """Form values -> names; each value may hold several names separated by commas or newlines."""
    if values is None:
        return None
    names = [name.strip() for value in values for name in value.replace("\n", ",").split(",")]
    return [name for name in names if name]


def decode_table(data: bytes, filename: str, features: Sequence[str] | None, limits: Limits) -> pd.DataFrame:
    """Upload bytes -> Metadata_* columns plus float32 feature columns (InputError subclasses otherwise)."""
    name = filename.lower()
    if data.startswith(_PARQUET_MAGIC):
        table = _read_parquet(data, filename, limits)
    elif name.endswith((".parquet", ".pq")):
        raise UnsupportedMedia(f"{filename} is not a Parquet file (no PAR1 header)")
    elif data.startswith(_GZIP_MAGIC):
        limit = min(limits.max_table_bytes, limits.max_table_expansion * len(data))
        table = _read_csv(_gunzip(data, filename, limit), filename, limits)
    elif name.endswith(".gz"):
        raise UnsupportedMedia(f"{filename} is not gzip-compressed")
    else:
        if len(data) > limits.max_table_bytes:
            raise PayloadTooLarge(
                f"{filename}: {len(data)} bytes of CSV is over the limit of {limits.max_table_bytes}"
            )
        table = _read_csv(data, filename, limits)
    if table.size > limits.max_table_values:
        raise PayloadTooLarge(
            f"{filename}: {table.shape[0]} rows x {table.shape[1]} columns is over the limit "
            f"of {limits.max_table_values} values"
        )
    return profile_table(table, features, what=filename)


def profile_table(table: pd.DataFrame, features: Sequence[str] | None, *, what: str) -> pd.DataFrame:
    """Keep the metadata columns (``Metadata_*`` and unprefixed coordinates) and the features (float32,
    finite or NaN, chosen by ``feature_columns``); other columns are dropped."""
    columns = [str(c) for c in table.columns]
    duplicated = duplicate_names(columns)
    if duplicated:
        raise InputError(f"{what}: duplicate column names: {', '.join(duplicated[:5])}")
    table = table.set_axis(columns, axis=1)
    if len(table) == 0:
        raise InputError(f"{what}: the table has no rows")
    if features is not None:
        if len(set(features)) != len(features):
            raise InputError(f"{what}: the feature list names a column more than once")
        named_meta = [f for f in features if f.startswith(METADATA_PREFIX)]
        if named_meta:
            raise InputError(
                f"{what}: {METADATA_PREFIX}* columns describe rows and cannot be features "
                f"({', '.join(named_meta[:3])})"
            )
    try:
        names = feature_columns(table, features)
    except InputError as exc:
        raise InputError(f"{what}: {exc}") from exc
    warn_ignored_columns(*ignored_columns(table, features), source=what)
    values = feature_matrix(table, names)
    check_finite(values, names, what=f"{what} (values beyond float32 count as infinite)")
    meta = metadata_columns(table)
    return pd.concat([table.loc[:, meta].reset_index(drop=True), pd.DataFrame(values, columns=names)], axis=1)


def _read_parquet(data: bytes, filename: str, limits: Limits) -> pd.DataFrame:
    """Parquet bytes -> DataFrame, once the footer shows the decoded table is within the limits."""
    try:
        handle = pq.ParquetFile(io.BytesIO(data))
        meta = handle.metadata
        _check_values(meta.num_rows, meta.num_columns, filename, limits)
        nested = [f.name for f in handle.schema_arrow if pa.types.is_nested(f.type)]
        if nested:
            raise InputError(f"{filename}: nested (list, struct or map) columns are not profile data: {', '.join(nested[:5])}")
        budget = min(limits.max_table_bytes, limits.max_table_expansion * len(data))
        declared = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        estimate = max(declared, 8 * meta.num_rows * meta.num_columns)
        if estimate > budget:
            raise PayloadTooLarge(
                f"{filename}: {len(data)} bytes of Parquet decode to about {estimate} bytes, over the limit of {budget}"
            )
        strings = [f.name for f in handle.schema_arrow if pa.types.is_string(f.type) or pa.types.is_binary(f.type)
                   or pa.types.is_large_string(f.type) or pa.types.is_large_binary(f.type)]
        # Strings stay dictionary-encoded until their decoded size is known: one long value
        # repeated on every row is a few bytes in the file and unbounded once decoded.
        table = pq.ParquetFile(io.BytesIO(data), read_dictionary=strings).read(use_threads=False)
        decoded = sum(_decoded_bytes(table.column(name)) for name in strings) + 8 * meta.num_rows * meta.num_columns
        if decoded > budget:
            raise PayloadTooLarge(f"{filename}: the table decodes to {decoded} bytes, over the limit of {budget}")
        for name in strings:
            column = table.column(name)
            plain = pa.chunked_array([chunk.dictionary_decode() for chunk in column.chunks], column.type.value_type)
            table = table.set_column(table.schema.get_field_index(name), name, plain)
        return table.to_pandas()
    except (pa.ArrowException, OSError, ValueError, TypeError) as exc:
        if isinstance(exc, InputError):
            raise
        raise UnsupportedMedia(f"{filename} is not a readable Parquet file ({_short(exc)})") from exc


def _decoded_bytes(column: pa.ChunkedArray) -> int:
    total = 0
    for chunk in column.chunks:
        lengths = pc.binary_length(chunk.dictionary).fill_null(0)
        total += int(pc.sum(pc.take(lengths, chunk.indices)).as_py() or 0)
    return total


def _check_values(rows: int, columns: int, filename: str, limits: Limits) -> None:
    if rows * columns > limits.max_table_values:
        raise PayloadTooLarge(
            f"{filename}: {rows} rows x {columns} columns is over the limit of {limits.max_table_values} values"
        )


def _gunzip(data: bytes, filename: str, limit: int) -> bytes:
    """Decompress at most ``limit`` bytes: a small upload must not expand without bound.

    The size is measured first by streaming through 1 MiB chunks that are thrown away, so a bomb
    costs one chunk of memory; only a stream within the limit is decompressed into memory.
    """
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            total = 0
            while chunk := stream.read(_GZIP_CHUNK):
                total += len(chunk)
                if total > limit:
                    raise PayloadTooLarge(f"{filename} decompresses to more than the limit of {limit} bytes")
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            return stream.read(limit + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise UnsupportedMedia(f"{filename} is not valid gzip ({_short(exc)})") from exc


def _read_csv(data: bytes, filename: str, limits: Limits) -> pd.DataFrame:
    """CSV bytes -> DataFrame; rows x columns are bounded from the header and newlines before parsing."""
    if b"\x00" in data[:65536]:
        raise UnsupportedMedia(f"{filename} is binary, not CSV, CSV.gz or Parquet")
    try:
        header = csv_header(data, what=filename)
        _check_values(data.count(b"\n"), len(header), filename, limits)
        return read_csv_table(data, what=filename)
    except UnicodeDecodeError as exc:
        raise UnsupportedMedia(f"{filename} is not UTF-8 CSV, CSV.gz or Parquet") from exc
    except pd.errors.EmptyDataError as exc:
        raise InputError(f"{filename}: the table is empty (no header row)") from exc
    except (pd.errors.ParserError, ValueError, OverflowError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{filename}: unreadable CSV ({_short(exc)})") from exc


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__

"""Profile tables in the SDK, without I/O: what to upload, what to send, answers -> tables.

pandas and pyarrow (base dependencies) are imported only when a DataFrame or Parquet body is actually
handled, so ``import cpcnn.client`` still loads only httpx and numpy.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np

from cpcnn.client._base import Upload
from cpcnn.errors import InputError
from cpcnn.schemas import MatchResult

if TYPE_CHECKING:
    import pandas as pd

#: A stored table's id (or anything with an ``id``, e.g. ``TablePublic``), a CSV/CSV.gz/Parquet path,
#: the file's bytes, a pandas DataFrame or a mapping of column name -> 1-D array.
TableInput = Any
#: Feature columns to use: names and/or glob patterns (``"efficientnet_*"``), a sequence or a
#: comma-separated string; None = every numeric column not named ``Metadata_*``.
FeaturesInput = Sequence[str] | str | None
_ID = re.compile(r"[0-9a-f]{32}")
_INLINE_KEYS = {"ids", "features"}
MATCH_COLUMNS = ("query_id", "rank", "library_id", "score")


def ref(artifact: Any, kind: str) -> str:
    """An id string or an object with ``.id`` -> the id, quoted for use as one path segment."""
    value = getattr(artifact, "id", artifact)
    if not isinstance(value, str) or not value:
        raise InputError(f"expected a {kind} id (a string) or a {kind} object, got {type(artifact).__name__}")
    return quote(value, safe="")


def stored_table_id(source: TableInput) -> str | None:
    """The id when ``source`` names a stored table, None when it must be uploaded first.

    A 32-hex-digit string is an id unless a file of that name exists.
    """
    value = getattr(source, "id", None)
    if isinstance(value, str):
        return value
    if isinstance(source, str) and _ID.fullmatch(source) and not Path(source).exists():
        return source
    return None


def table_upload(source: TableInput, *, features: FeaturesInput = None, name: str | None = None) -> Upload:
    """Any ``TableInput`` that is not an id -> the multipart body of ``POST /v1/tables``."""
    if isinstance(source, bytes | bytearray | memoryview):
        data, filename = bytes(source), name or "table"
    elif isinstance(source, str | PathLike):
        path = Path(source)
        if not path.is_file():
            raise InputError(f"table file {path} does not exist")
        data, filename = path.read_bytes(), path.name
    elif hasattr(source, "to_parquet"):
        buffer = io.BytesIO()
        source.to_parquet(buffer, index=False)
        data, filename = buffer.getvalue(), "table.parquet"
    elif isinstance(source, Mapping):
        data, filename = _columns_parquet(source), "table.parquet"
    else:
        raise InputError(
            f"cannot upload a {type(source).__name__} as a table: pass a path, bytes, a DataFrame, "
            "a mapping of columns or a table id"
        )
    fields: dict[str, str | list[str]] = {}
    fields.update(with_features({}, features))
    if name:
        fields["name"] = name
    return Upload(files=[("file", (filename, data, "application/octet-stream"))], data=fields)


def with_features(body: dict[str, Any], features: FeaturesInput) -> dict[str, Any]:
    """Add the ``features`` selection (names and/or globs; a string may hold several, comma-separated)."""
    if features is not None:
        body["features"] = [features] if isinstance(features, str) else [str(f) for f in features]
    return body


def _columns_parquet(columns: Mapping[str, Any]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.table({str(k): np.asarray(v) for k, v in columns.items()}), buffer)
    return buffer.getvalue()


def inline_profiles(queries: Any) -> dict[str, Any] | None:
    """A (Q, D) array or ``{"features": (Q, D), "ids": (Q,)}`` -> the inline ``profiles`` body; else None."""
    if isinstance(queries, Mapping) and "features" in queries and set(queries) <= _INLINE_KEYS:
        features = np.asarray(queries["features"], dtype=np.float64)
        ids = queries.get("ids")
    elif isinstance(queries, np.ndarray):
        features, ids = np.asarray(queries, dtype=np.float64), None
    else:
        return None
    if features.ndim != 2 or len(features) == 0:
        raise InputError(
            f"inline query features must be a non-empty (queries, features) array, got {features.shape}"
        )
    body: dict[str, Any] = {"features": features.tolist()}
    if ids is not None:
        body["ids"] = [v if isinstance(v, int) else str(v) for v in np.asarray(ids, dtype=object).tolist()]
    return body


def match_body(
    *,
    table_id: str | None,
    profiles: dict[str, Any] | None,
    id_col: str | None,
    top_k: int,
    leave_one_out: bool,
    features: FeaturesInput = None,
) -> dict[str, Any]:
    body: dict[str, Any] = with_features({"top_k": top_k, "leave_one_out": leave_one_out}, features)
    if profiles is not None:
        body["profiles"] = profiles
    else:
        body["table_id"] = table_id
    if id_col is not None:
        body["id_column"] = id_col
    return body


def matches_table(result: MatchResult) -> pd.DataFrame:
    """Matches -> the ``cpcnn match`` long table (query_id, rank, library_id, score, annotations...)."""
    import pandas as pd

    annotation_names = list(dict.fromkeys(k for m in result.matches for k in m.annotations))
    rows = [
        {
            "query_id": m.query_id,
            "rank": m.rank,
            "library_id": m.library_id,
            "score": m.score,
            **{k: m.annotations.get(k) for k in annotation_names},
        }
        for m in result.matches
    ]
    return pd.DataFrame(rows, columns=[*MATCH_COLUMNS, *annotation_names])


"""A reference library of treatment profiles and top-k matching of query profiles against it.

On disk a library is a folder: ``features.npy`` ((N, D) float32 rows normalized once, so matching is
one matrix product), ``rows.parquet`` (the id column and annotation columns, row-aligned) and
``library.json`` (format, id column, annotation columns, feature names, N). ``Library.load`` memory-maps
``features.npy`` read-only, so a server answers from the page cache without copying the library.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cpcnn._types import F32Array, I64Array
from cpcnn.errors import ConflictError, InputError
from cpcnn.profiles.aggregate import collapse_by_id
from cpcnn.profiles.similarity import normalize_rows, top_k_cosine
from cpcnn.profiles.tables import PathLike, check_finite, check_same_features, feature_columns, feature_matrix

_FORMAT = "cpcnn-library/1"
_META = "library.json"

QUERY_ID = "query_id"
RANK = "rank"
LIBRARY_ID = "library_id"
SCORE = "score"


class Library:
    """N reference profiles (unit float32 rows) with unique ids and annotation columns."""

    def __init__(
        self,
        *,
        ids: np.ndarray,
        annotations: pd.DataFrame,
        features: F32Array,
        feature_names: Sequence[str],
        id_column: str,
    ) -> None:
        if features.ndim != 2 or features.shape != (len(ids), len(feature_names)):
            raise InputError(
                f"library features {features.shape} do not match {len(ids)} ids x {len(feature_names)} names"
            )
        if len(annotations) != len(ids):
            raise InputError("library annotations and ids differ in length")
        self.ids = ids
        self.annotations = annotations.reset_index(drop=True)
        self.features = features
        self.feature_names = tuple(feature_names)
        self.id_column = id_column
        self._row_of = {v: i for i, v in enumerate(ids.tolist())}
        if len(self._row_of) != len(ids):
            raise InputError(f"library ids in {id_column!r} are not unique")

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"Library(n={len(self)}, features={len(self.feature_names)}, id_column={self.id_column!r})"

    @classmethod
    def from_profiles(
        cls,
        table: pd.DataFrame,
        *,
        id_col: str,
        annotations: Sequence[str] = (),
        features: Sequence[str] | None = None,
    ) -> Library:
        """Build from a profile table; rows sharing an id are averaged first (wells -> treatment)."""
        names = feature_columns(table, features)
        annotations = [c for c in dict.fromkeys(annotations) if c != id_col]
        treatments = collapse_by_id(table, id_col=id_col, features=names, annotations=annotations)
        values = feature_matrix(treatments, names)
        if np.isnan(values).any():
            raise InputError("library profiles contain NaN features; aggregate (which drops NaN rows) first")
        return cls(
            ids=treatments[id_col].to_numpy(),
            annotations=treatments.loc[:, list(annotations)],
            features=normalize_rows(values),
            feature_names=names,
            id_column=id_col,
        )

    def save(self, directory: PathLike) -> Path:
        """Write the library folder atomically; replaces an existing library folder, never other folders."""
        directory = Path(directory)
        if directory.exists() and any(directory.iterdir()) and not (directory / _META).is_file():
            raise ConflictError(f"{directory} exists and is not a cpcnn library folder")
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".library-", dir=directory.parent))
        try:
            np.save(tmp / "features.npy", np.ascontiguousarray(self.features, dtype=np.float32))
            rows = pd.concat(
                [pd.DataFrame({self.id_column: self.ids}), self.annotations.reset_index(drop=True)], axis=1
            )
            rows.to_parquet(tmp / "rows.parquet", index=False)
            meta = {
                "format": _FORMAT,
                "id_column": self.id_column,
                "annotation_columns": list(self.annotations.columns),
                "feature_names": list(self.feature_names),
                "n_rows": len(self),
                "normalized": True,
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }
            (tmp / _META).write_text(json.dumps(meta, indent=1))
            if directory.exists():
                shutil.rmtree(directory)
            os.replace(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return directory

    @classmethod
    def load(cls, directory: PathLike, *, mmap: bool = True) -> Library:
        """Open a library folder; ``mmap`` maps ``features.npy`` read-only instead of reading it."""
        directory = Path(directory)
        if not (directory / _META).is_file():
            raise InputError(f"{directory}: not a cpcnn library folder (no {_META})")
        meta = json.loads((directory / _META).read_text())
        if meta.get("format") != _FORMAT:
            raise InputError(f"{directory}: unsupported library format {meta.get('format')!r}")
        features = np.load(directory / "features.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
        rows = pd.read_parquet(directory / "rows.parquet")
        return cls(
            ids=rows[meta["id_column"]].to_numpy(),
            annotations=rows.loc[:, meta["annotation_columns"]],
            features=features,
            feature_names=meta["feature_names"],
            id_column=meta["id_column"],
        )

    def rows_of(self, ids: Sequence[object]) -> I64Array:
        """Library row of each id, -1 where the id is not in the library."""
        return np.fromiter((self._row_of.get(v, -1) for v in ids), dtype=np.int64, count=len(ids))

    def search(
        self, queries: np.ndarray, *, k: int = 10, exclude: I64Array | None = None
    ) -> tuple[F32Array, I64Array]:
        """(Q, D) raw query features -> (Q, k') float32 cosine scores and int64 library rows, best first."""
        if k < 1:
            raise InputError(f"k must be >= 1, got {k}")
        return top_k_cosine(normalize_rows(queries), self.features, k=k, exclude=exclude)

    def match(
        self,
        queries: pd.DataFrame,
        *,
        k: int = 10,
        id_col: str | None = None,
        leave_one_out: bool = False,
        features: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Query table -> long table (query_id, rank, library_id, score, annotations...), Q x k' rows.

        ``id_col`` (default: the library's id column, if the queries have it, else the row number)
        names each query. ``leave_one_out`` never returns the library row with the query's own id
        and needs that id column. The queries' features (``feature_columns(queries, features)``) must
        be exactly the library's feature names.
        """
        names = feature_columns(queries, features)
        check_same_features(names, self.feature_names, what="the library")
        if id_col is None and self.id_column in queries.columns:
            id_col = self.id_column
        if id_col is not None and id_col not in queries.columns:
            raise InputError(f"query id column {id_col!r} not in the queries table")
        if leave_one_out and id_col is None:
            raise InputError(f"leave-one-out needs a query id column (the library's is {self.id_column!r})")
        query_ids = queries[id_col].to_numpy() if id_col is not None else np.arange(len(queries))
        exclude = self.rows_of(query_ids.tolist()) if leave_one_out else None
        values = feature_matrix(queries, self.feature_names)
        check_finite(values, self.feature_names, what="query profiles", allow_nan=False)
        scores, rows = self.search(values, k=k, exclude=exclude)
        k_eff = rows.shape[1]
        flat = rows.ravel()
        out = pd.DataFrame(
            {
                QUERY_ID: np.repeat(query_ids, k_eff),
                RANK: np.tile(np.arange(1, k_eff + 1, dtype=np.int64), len(queries)),
                LIBRARY_ID: self.ids[flat],
                SCORE: scores.ravel(),
            }
        )
        annotations = self.annotations.iloc[flat].reset_index(drop=True)
        return pd.concat([out, annotations], axis=1)

"""``GET /v1/tables/{id}/map``: a stored table's profiles in 2-D, for looking at them.

The coordinates come from ``cpcnn.profiles.projection`` (PCA by float64 SVD; UMAP when the server has
umap-learn). Large tables are mapped on evenly spaced rows, so one request is bounded in time and size.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
import pandas as pd
from cpcnn.service.app.deps import ApiKeyDep, ProfileStoreDep
from cpcnn.service.app.problems import problem_responses
from cpcnn.service.app.table_intake import split_names
from cpcnn.service.profile_store import ProfileStore
from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from cpcnn.errors import InputError
from cpcnn.profiles.projection import pca_2d, spread_rows, umap_2d, umap_available
from cpcnn.profiles.tables import feature_columns, feature_matrix, metadata_columns
from cpcnn.schemas import ProfileMap

router = APIRouter(prefix="/tables", tags=["tables"], dependencies=[ApiKeyDep])

#: Most points one map has, and most metadata columns sent with them.
MAX_MAP_ROWS = 20_000
MAX_MAP_METADATA = 64
#: Longest metadata value sent (labels, not documents).
MAX_LABEL_CHARS = 200


@router.get(
    "/{table_id}/map",
    response_model=ProfileMap,
    summary="A table's profiles in 2-D (PCA, or UMAP when installed) with their metadata",
    responses=problem_responses(401, 404, 422),
)
async def table_map(
    table_id: str,
    profiles: ProfileStoreDep,
    method: Annotated[Literal["pca", "umap"], Query(description="umap needs umap-learn on the server")] = "pca",
    max_rows: Annotated[int, Query(ge=2, le=MAX_MAP_ROWS, description="most points; larger tables are sampled "
                                                                       "evenly")] = 5000,
    features: Annotated[list[str] | None, Query(description="feature columns or globs (default: all)")] = None,
) -> ProfileMap:
    return await run_in_threadpool(build_map, profiles, table_id, method, max_rows, split_names(features))


def build_map(profiles: ProfileStore, table_id: str, method: Literal["pca", "umap"], max_rows: int,
              features: list[str] | None) -> ProfileMap:
    table = profiles.read_table(table_id)
    names = feature_columns(table, features)
    rows = spread_rows(len(table), max_rows)
    matrix = feature_matrix(table.iloc[rows], names)
    finite = np.isfinite(matrix).all(axis=1)
    rows, matrix = rows[finite], matrix[finite]
    if len(rows) < 2:
        raise InputError(f"a profile map needs 2 rows with every feature finite; this table has {len(rows)} "
                         f"(of {len(table)})")
    explained = None
    if method == "umap":
        coords = umap_2d(matrix)
    else:
        coords, explained = pca_2d(matrix)
    shown = table.iloc[rows]
    metadata = {column: _labels(shown[column]) for column in metadata_columns(table)[:MAX_MAP_METADATA]}
    return ProfileMap(
        table_id=table_id, method=method, n_rows=len(table), n_shown=len(rows),
        n_dropped_non_finite=int((~finite).sum()), explained_variance=explained,
        x=coords[:, 0].tolist(), y=coords[:, 1].tolist(), rows=rows.tolist(), metadata=metadata,
        methods=["pca", "umap"] if umap_available() else ["pca"],
    )


def _labels(values: pd.Series) -> list[str | None]:
    return [None if pd.isna(value) else str(value)[:MAX_LABEL_CHARS] for value in values.tolist()]

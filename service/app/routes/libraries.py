"""Reference libraries: build from a stored table, list, describe, delete, and top-k matching.

A library is saved once (unit rows in ``features.npy``) and opened memory-mapped on its first query;
later queries are served from the open library (an LRU in the ``ProfileStore``), so a query costs a
matrix product over mapped pages, never a read of the table it came from.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd
from cpcnn.service.app.deps import ApiKeyDep, ProfileStoreDep, SettingsDep
from cpcnn.service.app.problems import problem_responses
from cpcnn.service.profile_store import ProfileStore, artifact_id, selection_key
from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from cpcnn.errors import InputError
from cpcnn.profiles import Library
from cpcnn.profiles.matching import LIBRARY_ID, QUERY_ID, RANK, SCORE
from cpcnn.profiles.tables import feature_columns, table_kinds
from cpcnn.schemas import (
    MEDIA_JSON,
    InlineProfiles,
    LibraryCreate,
    LibraryList,
    LibraryPublic,
    MatchRequest,
    MatchResult,
)

router = APIRouter(prefix="/libraries", tags=["libraries"], dependencies=[ApiKeyDep])

#: Id column given to inline query profiles.
_INLINE_ID = "Metadata_query_id"


@router.post(
    "",
    status_code=201,
    response_model=LibraryPublic,
    summary="Build a reference library from a table (rows sharing an id are averaged)",
    responses=problem_responses(401, 404, 422),
)
async def create_library(body: LibraryCreate, response: Response, profiles: ProfileStoreDep) -> LibraryPublic:
    library = await run_in_threadpool(_build, profiles, body)
    response.headers["Location"] = f"/v1/libraries/{library.id}"
    return library


def _build(store: ProfileStore, body: LibraryCreate) -> LibraryPublic:
    store.table_public(body.table_id)  # 404 for an unknown table
    library_id = artifact_id(
        "library", body.table_id, body.id_column, json.dumps(body.annotations), *selection_key(body.features)
    )
    if store.has_library(library_id):
        return store.library_public(library_id)
    # Checked against the features this library would use (the selection, else the default rule), from the
    # Parquet schema alone, before any row is read.
    selected = set(feature_columns(table_kinds(store.table_path(body.table_id)), body.features))
    described = [c for c in dict.fromkeys((body.id_column, *body.annotations)) if c in selected]
    if described:
        raise InputError(
            f"{', '.join(described)} is a feature column; ids and annotations must be Metadata_* columns"
        )
    library = Library.from_profiles(
        store.read_table(body.table_id), id_col=body.id_column, annotations=body.annotations, features=body.features
    )
    if len(library) == 0:
        raise InputError(f"no rows of table {body.table_id} have a {body.id_column} value")
    return store.put_library(library, library_id, table_id=body.table_id)


@router.get("", response_model=LibraryList, summary="List libraries", responses=problem_responses(401))
async def list_libraries(profiles: ProfileStoreDep) -> LibraryList:
    data = await run_in_threadpool(profiles.libraries)
    return LibraryList(data=data, count=len(data))


@router.get(
    "/{library_id}",
    response_model=LibraryPublic,
    summary="One library",
    responses=problem_responses(401, 404),
)
async def get_library(library_id: str, profiles: ProfileStoreDep) -> LibraryPublic:
    return await run_in_threadpool(profiles.library_public, library_id)


@router.delete(
    "/{library_id}", status_code=204, summary="Delete a library", responses=problem_responses(401, 404)
)
async def delete_library(library_id: str, profiles: ProfileStoreDep) -> Response:
    await run_in_threadpool(profiles.delete_library, library_id)
    return Response(status_code=204)


@router.post(
    "/{library_id}/match",
    response_model=MatchResult,
    summary="Top-k cosine matches of query profiles (a stored table or inline arrays)",
    responses=problem_responses(401, 404, 422),
)
async def match_library(
    library_id: str, body: MatchRequest, profiles: ProfileStoreDep, settings: SettingsDep
) -> Response:
    result = await run_in_threadpool(_match, profiles, settings.limits.max_matches, library_id, body)
    return Response(result, media_type=MEDIA_JSON)


def _match(profiles: ProfileStore, limit: int, library_id: str, body: MatchRequest) -> str:
    library = profiles.library(library_id)
    if body.profiles is not None:
        queries = _inline_queries(body.profiles, library)
        id_col = _INLINE_ID if body.profiles.ids is not None else None
    else:
        assert body.table_id is not None
        queries, id_col = profiles.read_table(body.table_id), body.id_column
    rows = len(queries) * min(body.top_k, len(library))
    if rows > limit:
        raise InputError(
            f"{len(queries)} queries x top {body.top_k} is {rows} matches, over the limit of {limit}; "
            "send fewer queries per request"
        )
    frame = library.match(
        queries, k=body.top_k, id_col=id_col, leave_one_out=body.leave_one_out, features=body.features
    )
    result = MatchResult.model_validate(
        {
            "library": library_id,
            "n_queries": len(queries),
            "top_k": body.top_k,
            "matches": _records(frame, library),
        }
    )
    return result.model_dump_json()


def _inline_queries(profiles: InlineProfiles, library: Library) -> pd.DataFrame:
    widths = {len(row) for row in profiles.features}
    if len(widths) != 1:
        raise InputError("profiles.features rows differ in length")
    width = widths.pop()
    if width != len(library.feature_names):
        raise InputError(
            f"feature mismatch with the library: queries have {width} features, the library has "
            f"{len(library.feature_names)} (send them in the library's feature_names order)"
        )
    values = _float32_rows(profiles.features)
    frame = pd.DataFrame(values, columns=list(library.feature_names))
    if profiles.ids is not None:
        if len(profiles.ids) != len(values):
            raise InputError(f"profiles.ids has {len(profiles.ids)} ids for {len(values)} feature rows")
        frame.insert(0, _INLINE_ID, pd.Series(profiles.ids, dtype=object))
    return frame


def _float32_rows(rows: list[list[float]]) -> np.ndarray:
    """Inline query rows -> (Q, D) float32; InputError naming the first value that is not a finite float32."""
    values = np.asarray(rows, dtype=np.float64)
    with np.errstate(over="ignore"):
        narrow = values.astype(np.float32)
    bad = np.argwhere(~np.isfinite(narrow))
    if len(bad):
        row, column = (int(i) for i in bad[0])
        raise InputError(
            f"profiles.features row {row}, column {column} is {values[row, column]!r}: query features must be "
            f"finite float32 values (|x| <= {float(np.finfo(np.float32).max):.4g}); {len(bad)} such values in all"
        )
    return narrow


def _records(frame: pd.DataFrame, library: Library) -> list[dict[str, Any]]:
    annotations = {c: [_text(v) for v in frame[c].tolist()] for c in library.annotations.columns}
    query_ids = _ids(frame[QUERY_ID].to_numpy())
    library_ids = _ids(frame[LIBRARY_ID].to_numpy())
    ranks = frame[RANK].tolist()
    scores = frame[SCORE].astype(np.float64).tolist()
    return [
        {
            "query_id": query_ids[i],
            "rank": ranks[i],
            "library_id": library_ids[i],
            "score": scores[i],
            "annotations": {c: values[i] for c, values in annotations.items()},
        }
        for i in range(len(frame))
    ]


def _ids(values: np.ndarray) -> list[str | int]:
    """Ids as JSON: integers stay integers, everything else is text."""
    if values.dtype.kind in "iu":
        return [int(v) for v in values.tolist()]
    return [v if isinstance(v, int) and not isinstance(v, bool) else str(v) for v in values.tolist()]


def _text(value: object) -> str | None:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value)

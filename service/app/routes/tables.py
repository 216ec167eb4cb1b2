"""Profile tables: upload (CSV, CSV.gz, Parquet), list, describe, download, delete.

A table is stored once under a content hash of its bytes and feature list, so uploading the same file
again returns the same table. Transforms, libraries and evaluations refer to tables by id.
"""

from __future__ import annotations

from typing import Annotated, Literal

from cpcnn.service.app.deps import ApiKeyDep, ProfileStoreDep, SettingsDep
from cpcnn.service.app.intake import read_part
from cpcnn.service.app.problems import problem_responses
from cpcnn.service.app.table_intake import decode_table, split_names, table_id_for
from cpcnn.service.config import Limits
from cpcnn.service.profile_store import ProfileStore, check_id
from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from cpcnn.errors import InputError, UnsupportedMedia
from cpcnn.schemas import MEDIA_PARQUET, TableList, TablePublic

router = APIRouter(prefix="/tables", tags=["tables"], dependencies=[ApiKeyDep])

MEDIA_CSV = "text/csv"
_FORM_PARTS = {"file", "features", "name"}


@router.post(
    "",
    status_code=201,
    response_model=TablePublic,
    summary="Upload a profile table: Metadata_* columns plus numeric features",
    responses=problem_responses(400, 401, 413, 415, 422),
)
async def upload_table(
    request: Request,
    response: Response,
    profiles: ProfileStoreDep,
    settings: SettingsDep,
    file: Annotated[
        UploadFile | None, File(description="CSV, CSV.gz or Parquet (format read from the bytes)")
    ] = None,
    features: Annotated[
        list[str] | None,
        Form(
            description="feature columns, repeated or comma-separated, names or glob patterns such as "
            "efficientnet_* (default: every numeric column not named Metadata_*; unprefixed cell coordinates "
            "are kept as metadata); other columns are dropped"
        ),
    ] = None,
    name: Annotated[str | None, Form(max_length=256, description="a label (default: the file name)")] = None,
) -> TablePublic:
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise UnsupportedMedia(
            f"upload tables as multipart/form-data, not {content_type or 'an untyped body'}"
        )
    form = await request.form()
    unknown = sorted(k for k in form if k not in _FORM_PARTS)
    if unknown:
        raise InputError(f"unknown form part(s) {', '.join(unknown)}; send file, features and name")
    if file is None:
        raise InputError("no table: upload a 'file' part (CSV, CSV.gz or Parquet)")
    data = await read_part(file, "file", settings.limits.max_part_bytes)
    label = name or file.filename or "table"
    table = await run_in_threadpool(_store_upload, profiles, settings.limits, data, label, split_names(features))
    response.headers["Location"] = f"/v1/tables/{table.id}"
    return table


def _store_upload(profiles: ProfileStore, limits: Limits, data: bytes, label: str, features: list[str] | None) -> TablePublic:
    table_id = table_id_for(data, features)
    if profiles.has_table(table_id):
        return profiles.table_public(table_id)
    table = decode_table(data, label, features, limits)
    return profiles.put_table(table, table_id, name=label, provenance={})


@router.get("", response_model=TableList, summary="List stored tables", responses=problem_responses(401))
async def list_tables(profiles: ProfileStoreDep) -> TableList:
    data = await run_in_threadpool(profiles.tables)
    return TableList(data=data, count=len(data))


@router.get(
    "/{table_id}", response_model=TablePublic, summary="One table", responses=problem_responses(401, 404)
)
async def get_table(table_id: str, profiles: ProfileStoreDep) -> TablePublic:
    return await run_in_threadpool(profiles.table_public, table_id)


@router.get(
    "/{table_id}/data",
    summary="The table's rows: Parquet (default) or CSV",
    response_class=Response,
    responses={
        200: {
            "content": {
                MEDIA_PARQUET: {"schema": {"type": "string", "format": "binary"}},
                MEDIA_CSV: {"schema": {"type": "string"}},
            },
            "description": "Metadata_* columns, then float32 features",
        },
        **problem_responses(401, 404),
    },
)
async def get_table_data(
    table_id: str,
    profiles: ProfileStoreDep,
    format: Annotated[Literal["parquet", "csv"], Query(description="file format")] = "parquet",
) -> Response:
    path = profiles.table_path(table_id)
    await run_in_threadpool(profiles.table_public, table_id)  # 404 unless it exists
    if format == "parquet":
        return FileResponse(path, media_type=MEDIA_PARQUET, filename=f"{table_id}.parquet")
    table = await run_in_threadpool(profiles.read_table, table_id)
    body = await run_in_threadpool(table.to_csv, index=False)
    return Response(
        body,
        media_type=MEDIA_CSV,
        headers={"Content-Disposition": f'attachment; filename="{check_id(table_id, "table")}.csv"'},
    )


@router.delete(
    "/{table_id}",
    status_code=204,
    summary="Delete a table (transforms and libraries stay)",
    responses=problem_responses(401, 404),
)
async def delete_table(table_id: str, profiles: ProfileStoreDep) -> Response:
    await run_in_threadpool(profiles.delete_table, table_id)
    return Response(status_code=204)

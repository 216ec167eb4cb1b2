"""Sphering transforms: fit on a stored table's control rows, list, describe, delete, apply.

A transform's id hashes the table id, the control selector, lambda and the method: the same fit asked
again returns the stored transform instead of refitting. Applying stores the sphered table (its id
hashes the transform and table ids) and answers with that table; download its rows from
``GET /v1/tables/{id}/data``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cpcnn.service.app.deps import ApiKeyDep, ProfileStoreDep, SettingsDep
from cpcnn.service.app.problems import problem_responses
from cpcnn.service.profile_store import ProfileStore, artifact_id, check_id, selection_key
from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from cpcnn.errors import NotFoundError, PayloadTooLarge
from cpcnn.profiles import ControlSelector, fit_sphering
from cpcnn.profiles.sphering import check_lambda
from cpcnn.profiles.tables import feature_columns, table_kinds
from cpcnn.schemas import TablePublic, TableRef, TransformCreate, TransformList, TransformPublic

router = APIRouter(prefix="/transforms", tags=["transforms"], dependencies=[ApiKeyDep])


@router.post(
    "",
    status_code=201,
    response_model=TransformPublic,
    summary="Fit a sphering transform (ZCA) on a table's control rows",
    responses=problem_responses(401, 404, 413, 422),
)
async def create_transform(
    body: TransformCreate, response: Response, profiles: ProfileStoreDep, settings: SettingsDep
) -> TransformPublic:
    transform = await run_in_threadpool(_fit, profiles, settings.limits.max_sphering_features, body)
    response.headers["Location"] = f"/v1/transforms/{transform.id}"
    return transform


def _fit(store: ProfileStore, max_features: int, body: TransformCreate) -> TransformPublic:
    check_lambda(body.lam)
    if not store.has_table(body.table_id):
        raise NotFoundError(f"table {body.table_id} does not exist")
    _check_width(_n_selected(store.table_path(body.table_id), body.features), max_features)
    selector = ControlSelector.parse(body.controls)
    transform_id = artifact_id(
        "transform", body.table_id, str(selector), repr(float(body.lam)), body.method, *selection_key(body.features)
    )
    if store.has_transform(transform_id):
        return store.transform_public(transform_id)
    table = store.read_table(body.table_id)
    sphering = fit_sphering(
        table,
        controls=selector,
        lam=body.lam,
        method=body.method,
        features=body.features,
        source=f"table {body.table_id}",
    )
    sphering = dataclasses.replace(sphering, provenance={**sphering.provenance, "table_id": body.table_id})
    return store.put_transform(sphering, transform_id)


def _n_selected(path: Path, features: list[str] | None) -> int:
    """How many features the fit would use (``features`` or the default rule), from the Parquet schema alone."""
    return len(feature_columns(table_kinds(path), features))


def _check_width(n_features: int, limit: int) -> None:
    """Refuse before any row is read: the fit costs D^2 memory and D^3 time, the file 8 D^2 bytes."""
    if n_features > limit:
        raise PayloadTooLarge(
            f"{n_features} features is over the limit of {limit} features for a sphering fit; "
            "select fewer features (e.g. feature selection) first"
        )


@router.get("", response_model=TransformList, summary="List transforms", responses=problem_responses(401))
async def list_transforms(profiles: ProfileStoreDep) -> TransformList:
    data = await run_in_threadpool(profiles.transforms)
    return TransformList(data=data, count=len(data))


@router.get(
    "/{transform_id}",
    response_model=TransformPublic,
    summary="One transform",
    responses=problem_responses(401, 404),
)
async def get_transform(transform_id: str, profiles: ProfileStoreDep) -> TransformPublic:
    return await run_in_threadpool(profiles.transform_public, transform_id)


@router.delete(
    "/{transform_id}", status_code=204, summary="Delete a transform", responses=problem_responses(401, 404)
)
async def delete_transform(transform_id: str, profiles: ProfileStoreDep) -> Response:
    await run_in_threadpool(profiles.delete_transform, transform_id)
    return Response(status_code=204)


@router.post(
    "/{transform_id}/apply",
    status_code=201,
    response_model=TablePublic,
    summary="Sphere a stored table; the result is stored as a new table",
    responses=problem_responses(401, 404, 422),
)
async def apply_transform(
    transform_id: str, body: TableRef, response: Response, profiles: ProfileStoreDep
) -> TablePublic:
    table = await run_in_threadpool(_apply, profiles, transform_id, body.table_id, body.features)
    response.headers["Location"] = f"/v1/tables/{table.id}"
    return table


def _apply(store: ProfileStore, transform_id: str, table_id: str, features: list[str] | None) -> TablePublic:
    sphering = store.transform(transform_id)
    source = store.table_public(table_id)
    sphered_id = artifact_id("sphered", check_id(transform_id, "transform"), table_id, *selection_key(features))
    if store.has_table(sphered_id):
        return store.table_public(sphered_id)
    sphered = sphering.apply(store.read_table(table_id), features=features)
    return store.put_table(
        sphered,
        sphered_id,
        name=f"{source.name} (sphered)",
        provenance={"transform_id": transform_id, "table_id": table_id},
    )

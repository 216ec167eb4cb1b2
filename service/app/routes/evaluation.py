"""Retrieval metrics of a stored table, as ``cpcnn evaluate``: mAP, interpolated mAP, folds of enrichment.

Inputs with nothing to retrieve (fewer than two annotated treatments, no two sharing an annotation)
answer 422 naming why, rather than a result of nulls.
"""

from __future__ import annotations

from cpcnn.service.app.deps import ApiKeyDep, ProfileStoreDep
from cpcnn.service.app.problems import problem_responses
from cpcnn.service.profile_store import ProfileStore
from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from cpcnn.errors import InputError
from cpcnn.metrics import evaluate_retrieval
from cpcnn.schemas import EvaluateRequest, Evaluation

router = APIRouter(tags=["evaluation"], dependencies=[ApiKeyDep])

#: The evaluation holds a treatments x treatments matrix; larger tables belong to ``cpcnn evaluate``.
MAX_TREATMENTS = 20_000


@router.post(
    "/evaluate",
    response_model=Evaluation,
    summary="Retrieval metrics of a table's treatments (leave-one-out, cosine)",
    responses=problem_responses(401, 404, 422),
)
async def evaluate_table(body: EvaluateRequest, profiles: ProfileStoreDep) -> Evaluation:
    return await run_in_threadpool(_evaluate, profiles, body)


def _evaluate(profiles: ProfileStore, body: EvaluateRequest) -> Evaluation:
    table = profiles.read_table(body.table_id)
    for column in (body.id_column, body.annotation):
        if column not in table.columns:
            raise InputError(f"column {column!r} not in table {body.table_id}")
    n_treatments = int(table[body.id_column].nunique())
    if n_treatments > MAX_TREATMENTS:
        raise InputError(
            f"{n_treatments} treatments is over the limit of {MAX_TREATMENTS} for the API; "
            "use 'cpcnn evaluate' for larger tables"
        )
    result = evaluate_retrieval(
        table,
        id_col=body.id_column,
        annotation=body.annotation,
        sep=body.separator,
        features=body.features,
        convention=body.convention,
    )
    if result.n_queries == 0:
        raise InputError(f"nothing to evaluate: {result.message}")
    return Evaluation.model_validate({**result.to_dict(), "table_id": body.table_id})

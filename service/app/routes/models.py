"""Models in the store: what each expects (channels, crop, normalization) and produces."""

from __future__ import annotations

from cpcnn.service.app.deps import ApiKeyDep, ModelStoreDep
from cpcnn.service.app.problems import problem_responses
from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from cpcnn.errors import InputError, NotFoundError
from cpcnn.schemas import ModelList, ModelPublic

router = APIRouter(prefix="/models", tags=["models"], dependencies=[ApiKeyDep])


@router.get("", response_model=ModelList, summary="List models", responses=problem_responses(401))
async def list_models(models: ModelStoreDep) -> ModelList:
    manifests = await run_in_threadpool(models.list)
    data = [ModelPublic.from_manifest(m) for m in manifests]
    return ModelList(data=data, count=len(data))


@router.get("/{name}", response_model=ModelPublic, summary="One model", responses=problem_responses(401, 404))
async def get_model(name: str, models: ModelStoreDep) -> ModelPublic:
    try:
        stored = await run_in_threadpool(models.get, name)
    except (InputError, NotFoundError) as exc:  # an impossible name cannot exist; never show the store's path
        raise NotFoundError(f"model {name!r} does not exist; GET /v1/models lists the models") from exc
    return ModelPublic.from_manifest(stored.manifest)

"""What can be asked for: model architectures and cost models, read from their registries."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from api.deps import RuntimeDep
from api.schemas import CostModelsPublic, ModelsPublic

router = APIRouter(prefix="/v1", tags=["catalog"])


@router.get("/models", response_model=ModelsPublic)
def list_models(
    runtime: RuntimeDep,
    source: Annotated[Literal["timm", "torchvision"] | None, Query()] = None,
    q: Annotated[
        str | None, Query(max_length=100, description="case-insensitive substring of the name")
    ] = None,
) -> ModelsPublic:
    """Architectures a job or a plan can name (``model.source`` and ``model.name``)."""
    names = runtime.list_models(source=source, q=q)
    return ModelsPublic(data=names, count=len(names))


@router.get("/cost-models", response_model=CostModelsPublic)
def list_cost_models(runtime: RuntimeDep) -> CostModelsPublic:
    """Registered cost models with their unit and parameters (``cost_model.name/params``)."""
    items = runtime.list_cost_models()
    return CostModelsPublic(data=items, count=len(items))

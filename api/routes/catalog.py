"""What can be asked for: model architectures and cost models, read from their registries."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from api.schemas import CostModelsPublic, ModelPublic, ModelsPublic

router = APIRouter(prefix="/v1", tags=["catalog"])


@router.get("/models", response_model=ModelsPublic)
def list_models(
    source: Annotated[Literal["timm", "torchvision"] | None, Query()] = None,
    q: Annotated[
        str | None, Query(max_length=100, description="case-insensitive substring of the name")
    ] = None,
) -> ModelsPublic:
    """Architectures a job or a plan can name (``model.source`` and ``model.name``)."""
    from worker import models

    names = [
        ModelPublic(source=src, name=name)
        for src in models.sources()
        if source is None or src == source
        for name in models.list_architectures(src)
        if q is None or q.lower() in name.lower()
    ]
    return ModelsPublic(data=names, count=len(names))


@router.get("/cost-models", response_model=CostModelsPublic)
def list_cost_models() -> CostModelsPublic:
    """Registered cost models with their unit and parameters (``cost_model.name/params``)."""
    import cost_models

    items = cost_models.describe()
    return CostModelsPublic(data=items, count=len(items))

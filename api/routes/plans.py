"""Plans: a synchronous one-shot allocation of a target over a model's layers, no training."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import OwnerDep, RuntimeDep, SettingsDep, StoreDep
from api.schemas import ErrorPublic, PlanCreate, PlanPublic

router = APIRouter(prefix="/v1/plans", tags=["plans"])


@router.post(
    "",
    response_model=PlanPublic,
    responses={
        400: {"model": ErrorPublic, "description": "unknown architecture or cost model, ..."},
        401: {"model": ErrorPublic},
        404: {"model": ErrorPublic, "description": "checkpoint upload not found"},
        422: {"model": ErrorPublic},
    },
)
def create_plan(
    body: PlanCreate,
    settings: SettingsDep,
    store: StoreDep,
    owner: OwnerDep,
    runtime: RuntimeDep,
) -> PlanPublic:
    """Per-layer kept fraction and predicted cost for a model, cost model and target.

    Computed from the current weights (random initialisation, or ``model.checkpoint``) by the
    hard top-k of |w| per unit cost; answers in about a second for ResNet-50 on a CPU.
    """
    plan = runtime.make_plan(body, settings=settings, store=store, owner=owner)
    return PlanPublic(
        model=f"{body.model.source}/{body.model.name}",
        cost_model=body.cost_model.name,
        target=plan["target"],
        plan=plan,
    )

"""What the API asks of the job runtime: spec validation, plans and the catalogs (torch).

The routes reach this module through ``api.deps.RuntimeDep``, which imports it on the first
request that needs it, so the API answers health checks, lists and polls without torch.
"""

from __future__ import annotations

from typing import Any

import cost_models
from api.schemas import ModelPublic, PlanCreate
from runtime import models
from runtime.bounds import check_memory
from runtime.plans import make_plan as plan_for
from runtime.validation import validate_spec
from spartan.settings import Settings
from spartan.spec import JobSpec
from spartan.store import JobStore


def validate_job(spec: JobSpec, *, settings: Settings, store: JobStore, owner: str) -> None:
    """Every check a spec needs beyond its schema (``runtime.validation.validate_spec``), and
    the service's memory bound (``runtime.bounds.check_memory``).

    Raises:
        FieldError: naming the field (``UnknownReference`` for another owner's upload; the
            field behind the largest part of the memory estimate when over the limit).
    """
    validate_spec(spec, settings, owner=owner, store=store)
    check_memory(spec, settings)


def make_plan(
    request: PlanCreate, *, settings: Settings, store: JobStore, owner: str
) -> dict[str, Any]:
    """The one-shot plan for a request (``runtime.plans.make_plan``)."""
    return plan_for(
        request.model, request, request.cost_model, settings=settings, store=store, owner=owner
    )


def list_models(*, source: str | None, q: str | None) -> list[ModelPublic]:
    """Architectures of the model registry, filtered by source and a name substring."""
    return [
        ModelPublic(source=src, name=name)
        for src in models.sources()
        if source is None or src == source
        for name in models.list_architectures(src)
        if q is None or q.lower() in name.lower()
    ]


def list_cost_models() -> list[dict[str, Any]]:
    """The cost-model registry's description of every cost model."""
    return cost_models.describe()

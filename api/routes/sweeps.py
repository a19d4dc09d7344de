"""Sweeps: one job spec at several targets, and the Pareto frontier of what the children reach."""

from __future__ import annotations

from functools import partial
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from api import quotas, sweeps
from api.deps import (
    BrokerDep,
    IdempotencyKeyHeader,
    OwnerDep,
    RuntimeDep,
    SettingsDep,
    StoreDep,
)
from api.schemas import ErrorPublic, SweepCreate, SweepCreated, SweepPublic, SweepsPublic
from spartan.store import Sweep

router = APIRouter(prefix="/v1/sweeps", tags=["sweeps"])

_ERRORS = {
    400: {"model": ErrorPublic, "description": "invalid request (the field is named)"},
    401: {"model": ErrorPublic, "description": "missing or unknown API key"},
    404: {"model": ErrorPublic, "description": "no such sweep for this owner"},
    422: {"model": ErrorPublic, "description": "schema validation failed"},
}

SweepIdPath = Annotated[str, Path(min_length=1, max_length=40, description="a sweep id")]


async def _owned_sweep(sweep_id: SweepIdPath, store: StoreDep, owner: OwnerDep) -> Sweep:
    return await run_in_threadpool(sweeps.find_sweep, store, sweep_id=sweep_id, owner=owner)


OwnedSweepDep = Annotated[Sweep, Depends(_owned_sweep)]


@router.post(
    "",
    status_code=201,
    response_model=SweepCreated,
    responses={
        **_ERRORS,
        409: {"model": ErrorPublic},
        429: {"model": ErrorPublic, "description": "over a job quota; see Retry-After"},
    },
)
def create_sweep(
    body: SweepCreate,
    response: Response,
    settings: SettingsDep,
    store: StoreDep,
    broker: BrokerDep,
    owner: OwnerDep,
    runtime: RuntimeDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> SweepCreated:
    """Submit a sweep: one ordinary child job per target, each the spec with that target put
    into ``sparsity.sparsity`` or ``sparsity.cost_fraction``.

    ``targets`` holds one list: ``sparsity`` (each in (0, 1); params cost model only) or
    ``cost_fraction`` (each in (0, 1]), distinct values, at most ``SPARTAN_MAX_SWEEP_POINTS``
    (16 by default); the spec gives no target itself. Every child is validated as
    ``POST /v1/jobs`` validates a job before anything is stored (a bad target is reported at
    ``targets.<axis>.<i>``, the rest of the spec at ``spec...``), then the sweep and its
    children are stored at once and the children queued. The children are listed by
    ``GET /v1/jobs`` and can be cancelled, followed and downloaded like any job. Refused with
    429 when the children would take the owner over the queued-jobs quota.
    """
    replay = (
        idempotency_key is not None
        and store.find_sweep_by_idempotency_key(owner=owner, idempotency_key=idempotency_key)
        is not None
    )
    if not replay:
        adding = len(body.targets.sparsity or body.targets.cost_fraction or ())
        quotas.check_quota(store=store, settings=settings, owner=owner, adding=max(adding, 1))
    sweep, jobs, created = sweeps.submit_sweep(
        body,
        validate=partial(runtime.validate_job, settings=settings, store=store, owner=owner),
        settings=settings,
        store=store,
        broker=broker,
        owner=owner,
        idempotency_key=idempotency_key,
    )
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/sweeps/{sweep.id}"
    return sweeps.created(sweep, jobs)


@router.get("", response_model=SweepsPublic, responses=_ERRORS)
def list_sweeps(
    store: StoreDep,
    owner: OwnerDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> SweepsPublic:
    """The owner's sweeps, newest first, with their status and their children's counts."""
    data, count = sweeps.list_sweeps(store, owner=owner, limit=limit, offset=offset)
    return SweepsPublic(data=data, count=count, limit=limit, offset=offset)


@router.get("/{sweep_id}", response_model=SweepPublic, responses=_ERRORS)
def get_sweep(sweep: OwnedSweepDep, store: StoreDep, settings: SettingsDep) -> SweepPublic:
    """A sweep: its status (derived from the children), the child jobs with their targets,
    every succeeded child's point (``top1``, ``cost_fraction``, the deployed ``latency_ms``)
    and the Pareto frontier among them: the points no other point beats on both cost
    (``cost_fraction`` lower or equal) and accuracy (``top1`` higher or equal), cheapest
    first. Failed, cancelled and unfinished children have no point."""
    return sweeps.sweep_public(store, settings, sweep)


@router.get(
    "/{sweep_id}/frontier.png",
    response_class=Response,
    responses={
        **_ERRORS,
        200: {"content": {"image/png": {}}, "description": "the plot"},
        501: {"model": ErrorPublic, "description": "matplotlib is not installed"},
    },
)
def frontier_png(
    sweep: OwnedSweepDep,
    store: StoreDep,
    settings: SettingsDep,
    x: Annotated[
        sweeps.PlotAxis,
        Query(description="the cost axis: the cost fraction, or the deployed latency (ms)"),
    ] = "cost_fraction",
) -> Response:
    """Top-1 against the cost fraction (or the measured latency) of every succeeded child,
    the Pareto frontier highlighted, each point labelled with its target."""
    points = sweeps.sweep_points(settings, store.sweep_children(sweep_id=sweep.id))
    png = sweeps.frontier_png(sweep, points, x=x)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})


@router.post("/{sweep_id}/cancel", response_model=SweepPublic, responses=_ERRORS)
async def cancel_sweep(
    sweep: OwnedSweepDep,
    request: Request,
    store: StoreDep,
    settings: SettingsDep,
    owner: OwnerDep,
) -> SweepPublic:
    """Cancel every unfinished child, as ``POST /v1/jobs/{id}/cancel`` does each: queued
    ones at once, running ones at their next training step (terminated after
    ``SPARTAN_CANCEL_GRACE_S`` if they do not stop). Finished children are left as they are."""
    running = await run_in_threadpool(sweeps.cancel_sweep, store=store, sweep=sweep, owner=owner)
    for job in running:
        request.app.state.watch_cancel(job.id)
    return await run_in_threadpool(sweeps.sweep_public, store, settings, sweep)

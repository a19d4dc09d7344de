"""What the sweep routes do: submit a sweep, read it with its frontier, cancel it, draw it.

A sweep's children are ordinary jobs: each child spec goes through the checks a submitted job
goes through (``JobSpec``, then ``validate``: ``api.runtime_services.validate_job``) before
anything is stored; then the sweep and all its children are stored in one transaction
(``JobStore.create_sweep``) and the children sent to the broker. A child whose message is not
sent (the broker down, the process killed in between) is still queued with no send time, and
the reconcilers send it (``spartan.queue.resend_lost``), as for any submitted job.

The frontier is read from what the succeeded children left: their final metrics (the job's
``metrics``: ``final.top1``, ``cost.cost_fraction``) and the deployed latency of their cost
report (``cost_report.json``, read through the artifact helpers of ``api.services``).
Torch-free; the plot needs matplotlib (the ``plots`` extra), imported when one is drawn.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from api import services
from api.errors import ApiError, not_found
from api.schemas import (
    SweepCreate,
    SweepCreated,
    SweepJobPublic,
    SweepPointPublic,
    SweepPublic,
    SweepSummaryPublic,
)
from spartan.errors import FieldError, Loc
from spartan.queue import BROKER_DOWN, Broker, send_job
from spartan.settings import Settings
from spartan.spec import JobSpec
from spartan.store import Job, JobStore, Sweep, SweepChild
from spartan.sweeps import (
    Axis,
    Point,
    check_targets,
    child_specs,
    pareto_frontier,
    point_of,
    sweep_status,
)

log = logging.getLogger(__name__)

COST_REPORT = "cost_report.json"
PlotAxis = Literal["cost_fraction", "latency_ms"]


# submitting -----------------------------------------------------------------------------------
def plan_sweep(
    body: SweepCreate, *, validate: services.SpecCheck, settings: Settings
) -> tuple[Axis, list[float], list[JobSpec]]:
    """The axis, the targets and one validated job spec per target; nothing is stored.

    Raises:
        FieldError: at ``targets...`` for a bad list (``spartan.sweeps.check_targets``) or a
            target a child cannot reach, at ``spec...`` for the rest of the spec (400; 404
            for an unknown upload).
        RequestValidationError: a child spec that fails the job schema (422), located in
            ``spec`` (or at its target in ``targets``).
    """
    axis, values = check_targets(body.targets.model_dump(), max_points=settings.max_sweep_points)
    specs = []
    for i, child in enumerate(child_specs(body.spec, axis, values)):
        try:
            spec = JobSpec.model_validate(child)
        except ValidationError as exc:
            raise RequestValidationError(
                [{**err, "loc": ("body", *_located(err["loc"], axis, i))} for err in exc.errors()]
            ) from None
        try:
            validate(spec)
        except FieldError as exc:
            raise type(exc)(_located(exc.loc, axis, i), exc.msg) from None
        specs.append(spec)
    return axis, values, specs


def _located(loc: Sequence[Any], axis: Axis, index: int) -> Loc:
    """Where a child spec's problem is in the sweep body: its target is ``targets.<axis>.<i>``,
    everything else is in ``spec``."""
    loc = tuple(loc)
    if loc[:2] == ("sparsity", axis):
        return ("targets", axis, index, *loc[2:])
    return ("spec", *loc)


def submit_sweep(
    body: SweepCreate,
    *,
    validate: services.SpecCheck,
    settings: Settings,
    store: JobStore,
    broker: Broker,
    owner: str,
    idempotency_key: str | None = None,
) -> tuple[Sweep, list[Job], bool]:
    """Validate every child, store the sweep and its children at once, then send them;
    returns (sweep, its jobs in target order, created).

    A repeated idempotency key returns the first sweep (``created`` False); with a different
    body it is a 409.
    """
    axis, values, specs = plan_sweep(body, validate=validate, settings=settings)
    sweep, jobs, created = store.create_sweep(
        owner=owner,
        axis=axis,
        targets=values,
        spec=body.spec,
        child_specs=[spec.model_dump(mode="json") for spec in specs],
        idempotency_key=idempotency_key,
    )
    if not created:
        if (sweep.spec, sweep.axis, sweep.targets) != (body.spec, axis, values):
            raise ApiError(
                409,
                "this Idempotency-Key was already used with a different sweep body",
                loc=["header", "idempotency-key"],
                type="conflict",
            )
        return sweep, jobs, False
    for job in jobs:
        try:
            send_job(job, store=store, broker=broker, settings=settings)
        except BROKER_DOWN as exc:
            log.warning(
                "sweep %s stored but its jobs from %s on are not enqueued (broker unreachable: "
                "%s); the reconcilers send them",
                sweep.id,
                job.id,
                exc,
            )
            break
    return sweep, jobs, True


def created(sweep: Sweep, jobs: Sequence[Job]) -> SweepCreated:
    """The answer to a submission: the sweep, its status and its jobs with their targets."""
    return SweepCreated(
        id=sweep.id,
        status=sweep_status(j.status for j in jobs),
        jobs=[
            SweepJobPublic(id=j.id, target=t, status=j.status, error=j.error)
            for t, j in zip(sweep.targets, jobs, strict=True)
        ],
    )


def find_sweep(store: JobStore, *, sweep_id: str, owner: str) -> Sweep:
    """The owner's sweep; 404 otherwise (also for another owner's)."""
    sweep = store.get_sweep(sweep_id=sweep_id, owner=owner) if len(sweep_id) <= 40 else None
    if sweep is None:
        raise not_found("sweep", ["path", "sweep_id"])
    return sweep


# reading --------------------------------------------------------------------------------------
def child_public(child: SweepChild) -> SweepJobPublic:
    job = child.job
    return SweepJobPublic(id=job.id, target=child.target, status=job.status, error=job.error)


def counts(children: Sequence[SweepChild]) -> dict[str, int]:
    """Child jobs by status (every status, zeros included)."""
    out = dict.fromkeys(("queued", "running", "succeeded", "failed", "cancelled"), 0)
    for child in children:
        out[child.job.status] += 1
    return out


def summary(sweep: Sweep, children: Sequence[SweepChild]) -> SweepSummaryPublic:
    return SweepSummaryPublic(
        id=sweep.id,
        name=sweep.name,
        status=sweep_status(c.job.status for c in children),
        axis=sweep.axis,
        targets=sweep.targets,
        counts=counts(children),
        created_at=sweep.created_at,
    )


def list_sweeps(
    store: JobStore, *, owner: str, limit: int, offset: int
) -> tuple[list[SweepSummaryPublic], int]:
    """One page of the owner's sweeps, newest first, and their total count."""
    sweeps, total = store.list_sweeps(owner=owner, limit=limit, offset=offset)
    children = store.sweeps_children(sweep_ids=[s.id for s in sweeps])
    return [summary(s, children.get(s.id, [])) for s in sweeps], total


def sweep_points(settings: Settings, children: Sequence[SweepChild]) -> list[Point]:
    """The points of the succeeded children, cheapest first (failed, cancelled and unfinished
    children have none)."""
    points = []
    for child in children:
        job = child.job
        if job.status != "succeeded":
            continue
        report = read_json(settings, job.id, COST_REPORT)
        point = point_of(job.id, child.target, job.metrics, report)
        if point is None:
            log.warning("job %s succeeded without top-1 or cost fraction in its metrics", job.id)
            continue
        points.append(point)
    return sorted(points, key=lambda p: (p.cost_fraction, -p.top1, p.job_id))


def read_json(settings: Settings, job_id: str, name: str) -> dict[str, Any] | None:
    """A JSON artifact of a job, or None when absent or unreadable (logged)."""
    try:
        path = services.artifact_path(settings, job_id, name)
    except ApiError:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("job %s: cannot read %s: %s", job_id, name, exc)
        return None
    return data if isinstance(data, dict) else None


def sweep_public(store: JobStore, settings: Settings, sweep: Sweep) -> SweepPublic:
    """The whole sweep: status, children, the succeeded points and the frontier."""
    children = store.sweep_children(sweep_id=sweep.id)
    points = sweep_points(settings, children)
    return SweepPublic(
        **summary(sweep, children).model_dump(),
        jobs=[child_public(c) for c in children],
        points=[SweepPointPublic(**p.to_dict()) for p in points],
        frontier=[SweepPointPublic(**p.to_dict()) for p in pareto_frontier(points)],
        spec=sweep.spec,
    )


# cancelling -----------------------------------------------------------------------------------
def cancel_sweep(*, store: JobStore, sweep: Sweep, owner: str) -> list[Job]:
    """Cancel every unfinished child through the job cancel path (queued: at once; running:
    at its next step); returns the children still running (to watch, as a job cancel does)."""
    running = []
    for child in store.sweep_children(sweep_id=sweep.id):
        if child.job.finished:
            continue
        job = services.cancel_job(store=store, job_id=child.job.id, owner=owner)
        if job.status == "running":
            running.append(job)
    return running


# the plot -------------------------------------------------------------------------------------
class PlotsUnavailable(ApiError):
    """501: matplotlib is not installed on this service."""

    def __init__(self) -> None:
        super().__init__(
            501,
            "matplotlib is not installed on this service (pip install 'spartan[plots]'); "
            "GET /v1/sweeps/{id} has the same points as JSON",
            type="not_implemented",
        )


_LABELS: dict[PlotAxis, str] = {
    "cost_fraction": "cost fraction (kept share of the cost)",
    "latency_ms": "deployed latency (ms, measured on the worker)",
}


def frontier_png(sweep: Sweep, points: Sequence[Point], *, x: PlotAxis = "cost_fraction") -> bytes:
    """Top-1 against the cost fraction (or the deployed latency) of every succeeded child,
    the Pareto frontier on that axis highlighted, as a PNG.

    Raises:
        PlotsUnavailable: without matplotlib.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotsUnavailable() from None
    cost: Callable[[Point], float] = (
        (lambda p: p.cost_fraction) if x == "cost_fraction" else (lambda p: p.latency_ms or 0.0)
    )
    shown = [p for p in points if x == "cost_fraction" or p.latency_ms is not None]
    frontier = pareto_frontier(shown, cost=cost)
    on = {p.job_id for p in frontier}
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    others = [p for p in shown if p.job_id not in on]
    if others:
        ax.scatter(
            [cost(p) for p in others],
            [p.top1 for p in others],
            color="tab:gray",
            label="dominated",
            zorder=2,
        )
    if frontier:
        ax.plot(
            [cost(p) for p in frontier],
            [p.top1 for p in frontier],
            color="tab:red",
            marker="o",
            drawstyle="steps-post",
            label="Pareto frontier",
            zorder=3,
        )
    for p in shown:
        ax.annotate(
            f"{p.target:g}",
            (cost(p), p.top1),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize="small",
        )
    if not shown:
        ax.text(0.5, 0.5, "no succeeded child yet", ha="center", transform=ax.transAxes)
    ax.set_xlabel(_LABELS[x])
    ax.set_ylabel("top-1 (validation)")
    ax.set_title(f"{sweep.name or sweep.id}: {len(shown)} points, targets on {sweep.axis}")
    ax.grid(alpha=0.3)
    if shown:
        ax.legend(fontsize="small")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()

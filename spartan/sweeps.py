"""Sweeps: one job spec trained at several targets, and the Pareto frontier of the results.

A sweep is one submission (``POST /v1/sweeps``) of a job spec without a target and a list of
targets on one axis, ``sparsity`` or ``cost_fraction``. Each target becomes an ordinary child
job whose spec is the sweep's with that value put into ``sparsity.<axis>``. What the children
achieved is read as ``Point``s (top-1 against the kept cost fraction, and the deployed latency
measured on the worker), and ``pareto_frontier`` keeps the points no other point beats.

Torch-free and service-free: plain functions over numbers and spec mappings, so the API, the
CLI and the tests share them.

A sweep's status is derived from its children (``sweep_status``):

- ``queued``: every child is queued;
- ``running``: some child is queued or running, and not all are queued;
- ``succeeded``: every child succeeded;
- ``partial``: every child finished, some succeeded and some failed or were cancelled;
- ``failed``: every child finished, none succeeded, and some failed;
- ``cancelled``: every child was cancelled.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from spartan.errors import FieldError

Axis = Literal["sparsity", "cost_fraction"]
AXES: tuple[Axis, ...] = ("sparsity", "cost_fraction")
SweepStatus = Literal["queued", "running", "succeeded", "partial", "failed", "cancelled"]
SWEEP_STATUSES: tuple[SweepStatus, ...] = (
    "queued",
    "running",
    "succeeded",
    "partial",
    "failed",
    "cancelled",
)
_FINISHED = frozenset({"succeeded", "failed", "cancelled"})


# targets --------------------------------------------------------------------------------------
def check_targets(
    targets: Mapping[str, Sequence[float] | None], *, max_points: int
) -> tuple[Axis, list[float]]:
    """The axis and the values of a sweep's ``targets``; exactly one axis, a valid list.

    Args:
        targets: ``{"sparsity": [...]}`` or ``{"cost_fraction": [...]}`` (the other None or
            absent).
        max_points: the most values one sweep may have (``settings.max_sweep_points``).

    Raises:
        FieldError: at ``targets`` for both axes or neither, at ``targets.<axis>`` for an
            empty list or one longer than ``max_points``, at ``targets.<axis>.<i>`` for a
            value out of range ((0, 1) for sparsity, (0, 1] for cost_fraction) or repeated.
    """
    given = [axis for axis in AXES if targets.get(axis) is not None]
    if len(given) != 1:
        raise FieldError(
            ("targets",),
            "give exactly one of targets.sparsity and targets.cost_fraction"
            + (" (got both)" if given else ""),
        )
    axis = given[0]
    values = [float(v) for v in targets[axis] or ()]
    if not values:
        raise FieldError(("targets", axis), "give at least one target")
    if len(values) > max_points:
        raise FieldError(
            ("targets", axis),
            f"{len(values)} targets, more than this service's limit of {max_points} per sweep "
            "(SPARTAN_MAX_SWEEP_POINTS)",
        )
    seen: dict[float, int] = {}
    for i, value in enumerate(values):
        if not _in_range(axis, value):
            bounds = "0 < sparsity < 1" if axis == "sparsity" else "0 < cost_fraction <= 1"
            raise FieldError(("targets", axis, i), f"{value!r} is out of range ({bounds})")
        if value in seen:
            raise FieldError(
                ("targets", axis, i), f"{value!r} repeats targets.{axis}.{seen[value]}"
            )
        seen[value] = i
    return axis, values


def _in_range(axis: Axis, value: float) -> bool:
    if not math.isfinite(value):
        return False
    return 0.0 < value < 1.0 if axis == "sparsity" else 0.0 < value <= 1.0


def child_specs(spec: Mapping[str, Any], axis: Axis, values: Sequence[float]) -> list[dict]:
    """One job spec per target: a copy of ``spec`` with ``sparsity.<axis>`` set to it.

    The specs are not validated here (``JobSpec`` and the runtime checks do that).

    Raises:
        FieldError: at ``spec.sparsity`` when it is not a mapping, at
            ``spec.sparsity.sparsity`` / ``spec.sparsity.cost_fraction`` when the spec
            already has a target (the sweep gives them), and at ``targets.sparsity`` for a
            sparsity sweep under a cost model other than params (a sparsity target needs it).
    """
    sparsity = spec.get("sparsity", {})
    if not isinstance(sparsity, Mapping):
        raise FieldError(("spec", "sparsity"), "must be a mapping (the sparsity settings)")
    for name in AXES:
        if sparsity.get(name) is not None:
            raise FieldError(
                ("spec", "sparsity", name),
                f"a sweep's spec has no target: the sweep sets sparsity.{axis} from "
                f"targets.{axis}; remove sparsity.{name}",
            )
    cost_model = spec.get("cost_model") or {}
    cost_name = cost_model.get("name", "params") if isinstance(cost_model, Mapping) else None
    if axis == "sparsity" and cost_name is not None and cost_name != "params":
        raise FieldError(
            ("targets", "sparsity"),
            f"a sparsity target needs the params cost model; with cost model {cost_name!r} "
            "sweep targets.cost_fraction",
        )
    out = []
    for value in values:
        child = copy.deepcopy(dict(spec))
        child["sparsity"] = {**sparsity, axis: value}
        out.append(child)
    return out


# status ---------------------------------------------------------------------------------------
def sweep_status(statuses: Iterable[str]) -> SweepStatus:
    """A sweep's status from its children's (see the module docstring)."""
    counts = {s: 0 for s in ("queued", "running", "succeeded", "failed", "cancelled")}
    total = 0
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
        total += 1
    finished = sum(counts[s] for s in _FINISHED)
    if total == 0 or counts["queued"] == total:
        return "queued"
    if finished < total:
        return "running"
    if counts["succeeded"] == total:
        return "succeeded"
    if counts["succeeded"] > 0:
        return "partial"
    if counts["cancelled"] == total:
        return "cancelled"
    return "failed"


# the frontier ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Point:
    """What one succeeded child achieved.

    Attributes:
        job_id: the child job.
        target: the value it was given (on the sweep's axis).
        top1: validation top-1 of the final model, a fraction in [0, 1].
        cost_fraction: the kept fraction of the cost model's total cost (cost report).
        latency_ms: forward latency of the deployed model measured on the worker (ms); None
            when the job measured none.
    """

    job_id: str
    target: float
    top1: float
    cost_fraction: float
    latency_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


CostOf = Callable[["Point"], float]


def _cost_fraction(point: Point) -> float:
    return point.cost_fraction


def dominates(a: Point, b: Point, *, cost: CostOf = _cost_fraction) -> bool:
    """Whether ``a`` beats ``b``: no costlier, no less accurate, and strictly better in one.

    Args:
        cost: what a point costs (default its cost fraction; e.g. its latency instead).
    """
    ca, cb = cost(a), cost(b)
    return ca <= cb and a.top1 >= b.top1 and (ca < cb or a.top1 > b.top1)


def pareto_frontier(points: Iterable[Point], *, cost: CostOf = _cost_fraction) -> list[Point]:
    """The points no other point dominates (minimise ``cost``, by default the cost fraction;
    maximise top1), cheapest first; points equal in both stay together on the frontier
    (neither dominates the other).

    One sort and one pass: ordered by cost ascending then top-1 descending, the points of one
    cost are on the frontier when they have that cost's best top-1 and it is above the best
    top-1 of every cheaper point.
    """
    ordered = sorted(points, key=lambda p: (cost(p), -p.top1, p.job_id))
    frontier: list[Point] = []
    best_cheaper = -math.inf  # the best top-1 among the points cheaper than the current cost
    i = 0
    while i < len(ordered):
        at = cost(ordered[i])
        group = [p for p in ordered[i:] if cost(p) == at]  # one cost, best top-1 first
        top = group[0].top1
        if top > best_cheaper:
            frontier += [p for p in group if p.top1 == top]
            best_cheaper = top
        i += len(group)
    return frontier


def point_of(
    job_id: str,
    target: float,
    metrics: Mapping[str, Any] | None,
    cost_report: Mapping[str, Any] | None,
) -> Point | None:
    """A succeeded child's point from its final metrics (``metrics.json``: ``final.top1``,
    ``cost.cost_fraction``) and its cost report (``cost_report.json``: the deployed latency,
    ``measured_latency.sparse_ms``); None when top-1 or the cost fraction is missing."""
    metrics = metrics or {}
    final = metrics.get("final") or {}
    totals = metrics.get("cost") or (cost_report or {}).get("totals") or {}
    top1 = _number(final.get("top1"))
    cost = _number(totals.get("cost_fraction"))
    if cost is None:
        cost = _number(final.get("cost_fraction"))
    if top1 is None or cost is None:
        return None
    latency = _latency(cost_report)
    return Point(job_id=job_id, target=target, top1=top1, cost_fraction=cost, latency_ms=latency)


def _latency(report: Mapping[str, Any] | None) -> float | None:
    report = report or {}
    measured = report.get("measured_latency") or {}
    value = _number(measured.get("sparse_ms"))
    if value is None:
        value = _number((report.get("deployment") or {}).get("deployed_ms"))
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None

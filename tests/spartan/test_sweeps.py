"""Sweeps without a service (``spartan.sweeps``): the frontier, the targets, the status."""

from __future__ import annotations

import random

import pytest

from spartan.errors import FieldError
from spartan.sweeps import (
    Point,
    check_targets,
    child_specs,
    dominates,
    pareto_frontier,
    point_of,
    sweep_status,
)


def _p(job: str, cost: float, top1: float) -> Point:
    return Point(job_id=job, target=cost, top1=top1, cost_fraction=cost)


# the frontier ---------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(40))
def test_the_frontier_is_exactly_the_non_dominated_points(seed: int) -> None:
    rng = random.Random(seed)
    # few distinct values, so equal costs, equal accuracies and equal points all happen
    points = [
        _p(f"j{i}", rng.choice([0.1, 0.2, 0.3, 0.5, 1.0]), rng.choice([0.5, 0.7, 0.8, 0.9]))
        for i in range(rng.randint(1, 12))
    ]
    frontier = pareto_frontier(points)
    on = {p.job_id for p in frontier}
    for p in frontier:  # no frontier point is dominated by any point
        assert not any(dominates(q, p) for q in points), p
    for p in points:  # every other point is dominated by some point
        if p.job_id not in on:
            assert any(dominates(q, p) for q in points), p
    costs = [p.cost_fraction for p in frontier]
    assert costs == sorted(costs)
    assert pareto_frontier(list(reversed(points))) == frontier  # order does not matter


def test_the_frontier_by_hand() -> None:
    a, b, c, d = _p("a", 0.1, 0.70), _p("b", 0.2, 0.80), _p("c", 0.3, 0.75), _p("d", 0.5, 0.90)
    assert pareto_frontier([d, c, b, a]) == [a, b, d]  # c: b is cheaper and better
    assert pareto_frontier([]) == []
    assert pareto_frontier([c]) == [c]


def test_ties() -> None:
    one, twin = _p("one", 0.2, 0.8), _p("twin", 0.2, 0.8)
    assert {p.job_id for p in pareto_frontier([one, twin])} == {"one", "twin"}  # equal: both
    cheaper = _p("cheaper", 0.1, 0.8)  # as accurate, cheaper: both others are dominated
    assert pareto_frontier([one, twin, cheaper]) == [cheaper]
    better = _p("better", 0.2, 0.9)  # as cheap, more accurate
    assert pareto_frontier([one, better]) == [better]
    assert not dominates(one, twin) and not dominates(twin, one)


def test_a_frontier_on_another_cost() -> None:
    fast = Point(job_id="fast", target=0.5, top1=0.8, cost_fraction=0.5, latency_ms=1.0)
    cheap = Point(job_id="cheap", target=0.2, top1=0.7, cost_fraction=0.2, latency_ms=2.0)
    assert pareto_frontier([fast, cheap]) == [cheap, fast]
    by_latency = pareto_frontier([fast, cheap], cost=lambda p: p.latency_ms or 0.0)
    assert by_latency == [fast]  # faster and more accurate
    assert dominates(fast, cheap, cost=lambda p: p.latency_ms or 0.0)


def _metrics(top1: float, cost: float) -> dict:
    return {"final": {"top1": top1, "cost_fraction": cost + 0.01}, "cost": {"cost_fraction": cost}}


def test_a_point_reads_top1_cost_and_the_deployed_latency() -> None:
    report = {"measured_latency": {"sparse_ms": 1.5, "dense_ms": 3.0}}
    point = point_of("job_a", 0.3, _metrics(0.8, 0.31), report)
    assert point == Point(job_id="job_a", target=0.3, top1=0.8, cost_fraction=0.31, latency_ms=1.5)
    assert point.to_dict()["latency_ms"] == 1.5
    deployed = {"deployment": {"deployed_ms": 2.0}}
    assert point_of("j", 0.3, _metrics(0.8, 0.3), deployed).latency_ms == 2.0
    assert point_of("j", 0.3, _metrics(0.8, 0.3), None).latency_ms is None
    only_final = {"final": {"top1": 0.5, "cost_fraction": 0.4}}
    assert point_of("j", 0.3, only_final, None).cost_fraction == 0.4
    # a child without final metrics (failed, cancelled, or not finished) has no point
    assert point_of("j", 0.3, None, None) is None
    assert point_of("j", 0.3, {"final": {"top1": float("nan")}, "cost": {}}, None) is None


# targets --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("targets", "loc"),
    [
        ({}, ("targets",)),
        ({"sparsity": [0.5], "cost_fraction": [0.5]}, ("targets",)),
        ({"sparsity": []}, ("targets", "sparsity")),
        ({"cost_fraction": [i / 20 for i in range(1, 19)]}, ("targets", "cost_fraction")),
        ({"sparsity": [0.5, 0.5]}, ("targets", "sparsity", 1)),
        ({"sparsity": [0.5, 1.0]}, ("targets", "sparsity", 1)),
        ({"sparsity": [0.0]}, ("targets", "sparsity", 0)),
        ({"cost_fraction": [0.5, 0.0]}, ("targets", "cost_fraction", 1)),
        ({"cost_fraction": [1.5]}, ("targets", "cost_fraction", 0)),
        ({"cost_fraction": [float("nan")]}, ("targets", "cost_fraction", 0)),
    ],
)
def test_bad_targets_name_the_field(targets: dict, loc: tuple) -> None:
    with pytest.raises(FieldError) as info:
        check_targets(targets, max_points=16)
    assert info.value.loc == loc


def test_good_targets() -> None:
    assert check_targets({"cost_fraction": [0.5, 0.3, 1.0]}, max_points=3) == (
        "cost_fraction",
        [0.5, 0.3, 1.0],
    )
    assert check_targets({"sparsity": [0.9], "cost_fraction": None}, max_points=1) == (
        "sparsity",
        [0.9],
    )


def test_child_specs_put_each_target_into_the_spec() -> None:
    spec = {"model": {"name": "resnet18"}, "sparsity": {"method": "spartan"}}
    children = child_specs(spec, "cost_fraction", [0.5, 0.2])
    assert [c["sparsity"] for c in children] == [
        {"method": "spartan", "cost_fraction": 0.5},
        {"method": "spartan", "cost_fraction": 0.2},
    ]
    assert spec == {"model": {"name": "resnet18"}, "sparsity": {"method": "spartan"}}
    assert child_specs({"model": {}}, "sparsity", [0.9])[0]["sparsity"] == {"sparsity": 0.9}


@pytest.mark.parametrize(
    ("spec", "axis", "loc"),
    [
        ({"sparsity": {"sparsity": 0.9}}, "cost_fraction", ("spec", "sparsity", "sparsity")),
        (
            {"sparsity": {"cost_fraction": 0.2}},
            "cost_fraction",
            ("spec", "sparsity", "cost_fraction"),
        ),
        ({"sparsity": 3}, "sparsity", ("spec", "sparsity")),
        ({"cost_model": {"name": "flops"}}, "sparsity", ("targets", "sparsity")),
    ],
)
def test_child_specs_refuse(spec: dict, axis: str, loc: tuple) -> None:
    with pytest.raises(FieldError) as info:
        child_specs(spec, axis, [0.5])  # type: ignore[arg-type]
    assert info.value.loc == loc


# status ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("children", "status"),
    [
        (["queued", "queued"], "queued"),
        (["queued", "running"], "running"),
        (["queued", "succeeded"], "running"),
        (["succeeded", "succeeded"], "succeeded"),
        (["succeeded", "failed"], "partial"),
        (["succeeded", "cancelled"], "partial"),
        (["failed", "cancelled"], "failed"),
        (["failed", "failed"], "failed"),
        (["cancelled", "cancelled"], "cancelled"),
    ],
)
def test_status_from_the_children(children: list[str], status: str) -> None:
    assert sweep_status(children) == status

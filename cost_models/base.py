"""Shared pieces of the built-in cost models: latency units, budgets and input checks.

A cost model prices each masked layer with one ``LayerCost``: ``per_entry`` for every kept
entry (one weight, or one r x c block) plus ``fixed``, paid whatever is kept. The dense cost of a
layer is ``fixed + per_entry * entries``; a sparse one costs ``fixed + per_entry * kept``.
Cost models whose unit is a time (``s``, ``ms``, ``us``, ``ns``) predict latency: the layer's
cost converted to milliseconds.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import ClassVar

from spartan_core.costs import CostModel, LayerCost
from spartan_core.layers import MaskTarget

# milliseconds per unit
TIME_UNITS_MS: dict[str, float] = {
    "s": 1e3,
    "ms": 1.0,
    "us": 1e-3,
    "µs": 1e-3,
    "ns": 1e-6,
}


class CostModelBase:
    """Common behaviour of the built-ins: latency prediction when the unit is a time."""

    name: str = ""
    unit: str = ""
    # whether some parameters make this model predict latency (shown by describe())
    latency_capable: ClassVar[bool] = False

    @property
    def predicts_latency(self) -> bool:
        """Whether ``fixed + per_entry * kept`` is a latency (the unit is a time)."""
        return self.unit in TIME_UNITS_MS

    def latency_ms(self, cost: LayerCost, kept_entries: int) -> float | None:
        """Predicted latency of one layer with ``kept_entries`` kept, in ms (None if no time)."""
        if not self.predicts_latency:
            return None
        return (cost.fixed + cost.per_entry * kept_entries) * TIME_UNITS_MS[self.unit]

    def params(self) -> dict[str, object]:
        """The constructor parameters, JSON-able (recorded in reports and plans)."""
        return {}


def predicts_latency(cost_model: CostModel) -> bool:
    """Whether a (possibly third-party) cost model predicts latency."""
    return bool(getattr(cost_model, "predicts_latency", False)) and hasattr(
        cost_model, "latency_ms"
    )


def cost_model_params(cost_model: CostModel) -> dict[str, object]:
    """A cost model's parameters for reports ({} when it does not say)."""
    params = getattr(cost_model, "params", None)
    return dict(params()) if callable(params) else {}


def check_input_size(input_size: Sequence[int], field: str = "input_size") -> tuple[int, ...]:
    """Validate a per-sample input shape such as (3, 224, 224) (no batch dimension)."""
    message = f"{field}: expected a sequence of positive integers, got {input_size!r}"
    if isinstance(input_size, str | bytes) or not isinstance(input_size, Sequence):
        raise ValueError(message)
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in input_size):
        raise ValueError(message)
    size = tuple(int(s) for s in input_size)
    if not size or any(s < 1 for s in size):
        raise ValueError(message)
    return size


def checked_costs(
    cost_model: CostModel, costs: Mapping[str, LayerCost], targets: Sequence[MaskTarget]
) -> dict[str, LayerCost]:
    """Check that a cost model priced every target with finite, positive costs."""
    out = {}
    for t in targets:
        cost = costs.get(t.name)
        if cost is None:
            raise ValueError(f"cost_model: {cost_model.name!r} gave no cost for layer {t.name!r}")
        if not (math.isfinite(cost.per_entry) and cost.per_entry > 0):
            raise ValueError(
                f"cost_model: {cost_model.name!r} gave a non-positive cost per entry "
                f"{cost.per_entry!r} for layer {t.name!r}"
            )
        if not (math.isfinite(cost.fixed) and cost.fixed >= 0):
            raise ValueError(
                f"cost_model: {cost_model.name!r} gave a negative fixed cost {cost.fixed!r} "
                f"for layer {t.name!r}"
            )
        out[t.name] = cost
    return out


def with_input_size(cost_model: CostModel, input_size: Sequence[int] | None) -> CostModel:
    """The cost model priced for ``input_size``: a copy when it has another ``input_size``.

    Cost models without an ``input_size`` (params, memory, tables) are returned as they are.
    """
    if input_size is None or getattr(cost_model, "input_size", None) is None:
        return cost_model
    size = check_input_size(input_size)
    if tuple(cost_model.input_size) == size:
        return cost_model
    adjusted = copy.copy(cost_model)
    adjusted.input_size = size
    return adjusted


def entry_budget(
    target: float,
    masked_cost: float,
    unmasked_cost: float = 0.0,
    *,
    cheapest: float,
    unit: str = "",
) -> float:
    """The budget for the masked entries: ``target * (masked + unmasked) - unmasked``.

    As in ``SparsifierConfig``: ``target`` is the kept fraction f of the cost of every maskable
    weight of the model, maskable layers left unmasked count at their full (dense) cost, and
    fixed per-layer costs are outside the budget (no mask changes them).

    Args:
        target: kept cost fraction f in (0, 1].
        masked_cost: sum of per_entry * entries over the masked layers.
        unmasked_cost: dense cost of the maskable layers left unmasked.
        cheapest: the lowest per-entry cost of a masked layer (at least one entry is kept).
        unit: the cost unit, for the message.

    Raises:
        ValueError: if target is not in (0, 1] or cannot be reached by the masked layers.
    """
    if isinstance(target, bool) or not (isinstance(target, int | float) and 0.0 < target <= 1.0):
        raise ValueError(f"target: expected a cost fraction in (0, 1], got {target!r}")
    total = masked_cost + unmasked_cost
    budget = target * total - unmasked_cost
    if budget < cheapest * (1 - 1e-9):
        raise ValueError(
            f"target: cost fraction {target:g} cannot be reached: the maskable layers left "
            f"unmasked cost {unmasked_cost:g} {unit} ({unmasked_cost / total:.4g} of the "
            f"{total:g} {unit} of all maskable weights), and the masked layers must keep at "
            f"least one entry ({cheapest:g} {unit})"
        )
    return min(budget, masked_cost)

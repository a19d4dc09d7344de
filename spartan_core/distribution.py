"""How a cost budget is spread over the masked layers.

A distribution groups the masked layers into budget groups (each group has one budget, one
dual variable and one hard threshold) and gives each group its kept cost fraction for a
masked-layer fraction f. Every distribution spends exactly f of the masked layers' cost:
sum over groups of fraction * group cost = f * total cost.

- ``global``: one group over all layers, the default; layers compete for one budget.
- ``uniform``: one group per layer, each keeping f.
- ``erk``: one group per layer, with Erdos-Renyi-Kernel fractions as in RigL (Evci et al.,
  2020): the density of a layer is eps * sum(shape) / prod(shape) (for a conv, the shape
  includes the kernel size), capped at 1; layers that hit the cap are kept dense and eps is
  solved again over the rest.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class LayerInfo:
    """What a distribution needs to know about one masked layer.

    Attributes:
        name: fully qualified parameter name.
        shape: the weight's shape as stored.
        cost: total cost of the layer's maskable entries (per-entry cost times entries).
    """

    name: str
    shape: tuple[int, ...]
    cost: float


@dataclass(frozen=True)
class BudgetGroup:
    """Layers (indices into the layer list) sharing one budget, and its kept cost fraction."""

    layers: tuple[int, ...]
    fraction: float


Distribution = Callable[[Sequence[LayerInfo], float], list[BudgetGroup]]

DISTRIBUTIONS: dict[str, Distribution] = {}


def register_distribution(name: str) -> Callable[[Distribution], Distribution]:
    """Decorator adding a distribution to the registry under ``name``."""

    def add(fn: Distribution) -> Distribution:
        DISTRIBUTIONS[name] = fn
        return fn

    return add


def get_distribution(name: str) -> Distribution:
    """The registered distribution called ``name``.

    Raises:
        ValueError: naming ``distribution`` and the valid choices.
    """
    try:
        return DISTRIBUTIONS[name]
    except KeyError:
        raise ValueError(
            f"distribution: unknown {name!r}, expected one of {sorted(DISTRIBUTIONS)}"
        ) from None


def _check(layers: Sequence[LayerInfo], fraction: float) -> None:
    if not layers:
        raise ValueError("layers: a distribution needs at least one layer")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction: expected a kept fraction in (0, 1], got {fraction!r}")


@register_distribution("global")
def global_distribution(layers: Sequence[LayerInfo], fraction: float) -> list[BudgetGroup]:
    """One budget group over every layer, keeping ``fraction`` of their total cost."""
    _check(layers, fraction)
    return [BudgetGroup(tuple(range(len(layers))), fraction)]


@register_distribution("uniform")
def uniform_distribution(layers: Sequence[LayerInfo], fraction: float) -> list[BudgetGroup]:
    """One group per layer, each keeping ``fraction`` of its cost."""
    _check(layers, fraction)
    return [BudgetGroup((i,), fraction) for i in range(len(layers))]


@register_distribution("erk")
def erk_distribution(layers: Sequence[LayerInfo], fraction: float) -> list[BudgetGroup]:
    """One group per layer with Erdos-Renyi-Kernel fractions (see the module docstring)."""
    return [BudgetGroup((i,), d) for i, d in enumerate(erk_densities(layers, fraction))]


def erk_densities(layers: Sequence[LayerInfo], fraction: float) -> list[float]:
    """Per-layer kept fractions d_l with sum_l d_l * cost_l = fraction * sum_l cost_l.

    d_l = min(1, eps * sum(shape_l) / prod(shape_l)); layers with the largest raw score are
    made dense one score level at a time until eps keeps every other layer below 1.
    """
    _check(layers, fraction)
    raw = [sum(layer.shape) / math.prod(layer.shape) for layer in layers]
    total = sum(layer.cost for layer in layers)
    budget = fraction * total
    dense: set[int] = set()
    while True:
        rest = [i for i in range(len(layers)) if i not in dense]
        if not rest:
            return [1.0] * len(layers)
        remaining = budget - sum(layers[i].cost for i in dense)
        eps = remaining / sum(raw[i] * layers[i].cost for i in rest)
        top = max(raw[i] for i in rest)
        if eps * top <= 1.0:
            break
        dense.update(i for i in rest if raw[i] == top)
    return [1.0 if i in dense else eps * raw[i] for i in range(len(layers))]

"""The interface between the method and linear cost models.

A cost model prices every maskable entry (one weight or one block) of each masked layer. All
built-in cost models (package ``cost_models``) are uniform within a layer, so a layer's price is
one ``LayerCost``: the cost of one kept entry and a fixed cost paid whatever is kept. The
method itself only needs ``per_entry``; ``fixed`` enters totals and reports.

N:M entries are single weights: ``price_targets`` prices N:M layers with ``layer_costs`` at
block shape (1, 1), unless the cost model has the optional method
``nm_layer_costs(model, targets, nm)`` (the ``memory`` model does: a kept N:M weight stores its
value and ceil(log2 m) bits of index metadata).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import nn

from spartan_core.blocks import BlockShape
from spartan_core.layers import MaskTarget
from spartan_core.nm import NMShape


@dataclass(frozen=True)
class LayerCost:
    """Price of one layer: ``per_entry`` per kept entry (> 0) plus ``fixed`` (>= 0)."""

    per_entry: float
    fixed: float = 0.0

    def __post_init__(self) -> None:
        if not self.per_entry > 0:
            raise ValueError(f"per_entry: costs must be positive, got {self.per_entry!r}")
        if not self.fixed >= 0:
            raise ValueError(f"fixed: costs must be non-negative, got {self.fixed!r}")


@runtime_checkable
class CostModel(Protocol):
    """A linear per-entry cost model (see ``cost_models`` for the built-ins)."""

    name: str
    unit: str

    def layer_costs(
        self, model: nn.Module, targets: Sequence[MaskTarget], block_shape: BlockShape
    ) -> dict[str, LayerCost]:
        """Price of each target, keyed by ``MaskTarget.name``."""
        ...


class ParamsCost:
    """One unit per weight: a block of r x c weights costs r * c."""

    name = "params"
    unit = "params"

    def layer_costs(
        self, model: nn.Module, targets: Sequence[MaskTarget], block_shape: BlockShape
    ) -> dict[str, LayerCost]:
        size = float(block_shape[0] * block_shape[1])
        return {t.name: LayerCost(per_entry=size) for t in targets}


def price_targets(
    cost_model: CostModel,
    model: nn.Module,
    targets: Sequence[MaskTarget],
    block_shape: BlockShape,
    nm: NMShape | None = None,
) -> dict[str, LayerCost]:
    """Each target's price for a structure: blocks of ``block_shape``, or N:M when ``nm``.

    N:M layers are priced per weight: by ``cost_model.nm_layer_costs(model, targets, nm)``
    when the cost model defines it, else by ``layer_costs`` with 1 x 1 blocks.
    """
    if nm is None:
        return cost_model.layer_costs(model, targets, block_shape)
    nm_costs = getattr(cost_model, "nm_layer_costs", None)
    if callable(nm_costs):
        return nm_costs(model, targets, nm)
    return cost_model.layer_costs(model, targets, (1, 1))

"""The interface between the method and linear cost models.

A cost model prices every maskable entry (one weight or one block) of each masked layer. All
built-in cost models (package ``cost_models``) are uniform within a layer, so a layer's price is
one ``LayerCost``: the cost of one kept entry and a fixed cost paid whatever is kept. The
method itself only needs ``per_entry``; ``fixed`` enters totals and reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import nn

from spartan_core.blocks import BlockShape
from spartan_core.layers import MaskTarget


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

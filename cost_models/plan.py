"""One-shot plans: how a cost budget would be spread over the layers, from the current weights.

The plan is the hard top-k of DESIGN 1.1 on unit values ``u = v / c`` (v the sum of |w| over a
block, c the block's cost), the allocation Spartan's masks converge to, computed without
training. The budget follows ``SparsifierConfig``: ``target`` is the kept fraction f of the cost
of every maskable weight of the model; maskable layers outside include/exclude stay dense and
count at full cost; fixed per-layer costs are outside the budget. The distribution
(``spartan_core.distribution``) splits the masked layers into budget groups: one group
(``global``), one per layer with the same fraction (``uniform``) or with Erdos-Renyi-Kernel
fractions (``erk``); each group keeps ``u >= threshold`` (``spartan_core.soft_topk.
hard_threshold``, linear time, no sort).

N:M (``nm=(n, m)``): every group of m consecutive weights along a masked layer's input keeps
its n largest |w| (ties to the lower index), so the masked layers keep n / m and the target,
optional, is checked as the Sparsifier checks it (``spartan_core.nm.nm_target``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from cost_models.base import cost_model_params, entry_budget
from cost_models.registry import resolve
from cost_models.report import LayerRow, PricedLayer, Totals, layer_row, price_layers, totals
from spartan_core.blocks import BlockShape, block_values, expand_block_mask, validate_block_shape
from spartan_core.costs import CostModel
from spartan_core.distribution import LayerInfo, get_distribution
from spartan_core.layers import find_targets, get_submodule
from spartan_core.nm import NMShape, group_view, nm_hard_mask, nm_target, validate_nm
from spartan_core.soft_topk import hard_threshold


@dataclass(eq=False)
class Plan(Mapping[str, Any]):
    """A one-shot allocation; reads as its JSON form (``plan["layers"]``, ``dict(plan)``).

    Attributes:
        cost_model: ``{"name", "unit", "params"}``.
        target: the kept cost fraction asked for.
        distribution: ``global``, ``uniform`` or ``erk``.
        block_shape: the (r, c) blocks of the masked layers.
        layers: one row per maskable layer, as in the cost report (``density`` is the kept
            fraction of entries; ``sparse_cost`` the predicted cost).
        totals: as in the cost report; ``cost_fraction`` is the achieved fraction.
        thresholds: the unit-value threshold of each budget group, keyed by its first layer
            (empty for N:M: every group of m is its own budget).
        nm: (n, m) of N:M structure, or None.
        masks: kept blocks ``{parameter name: (n_blocks,) bool}`` of the masked layers (not in
            the JSON form).
    """

    cost_model: dict[str, Any]
    target: float
    distribution: str
    block_shape: list[int]
    layers: list[LayerRow]
    totals: Totals
    thresholds: dict[str, float]
    nm: list[int] | None = None
    masks: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain JSON-able data (masks left out)."""
        return {
            "cost_model": self.cost_model,
            "target": self.target,
            "distribution": self.distribution,
            "block_shape": list(self.block_shape),
            "layers": [asdict(row) for row in self.layers],
            "totals": asdict(self.totals),
            "thresholds": dict(self.thresholds),
            "nm": None if self.nm is None else list(self.nm),
        }

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())

    def weight_masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The kept blocks expanded to each masked weight's shape (bool)."""
        shape = tuple(self.block_shape)
        out = {}
        for name, mask in self.masks.items():
            weight = _param(model, name)
            out[name] = expand_block_mask(mask.to(weight.device), weight.shape, shape)
        return out

    def apply(self, model: nn.Module) -> None:
        """Zero the weights outside the plan in place (one-shot pruning of ``model``)."""
        with torch.no_grad():
            for name, mask in self.weight_masks(model).items():
                _param(model, name).mul_(mask)


def _param(model: nn.Module, name: str) -> torch.Tensor:
    module_name, _, param_name = name.rpartition(".")
    return getattr(get_submodule(model, module_name), param_name)


def plan(
    model: nn.Module,
    cost_model: CostModel | str | Mapping[str, Any] | None = None,
    target: float | None = None,
    structure: BlockShape = (1, 1),
    distribution: str = "global",
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    input_size: Sequence[int] | None = None,
    *,
    nm: NMShape | None = None,
) -> Plan:
    """Allocate a cost budget over the layers by magnitude per unit cost (hard top-k).

    Args:
        model: the network, with its current (trained, uploaded or initial) weights.
        cost_model: a cost model, a registered name, ``{"name", "params"}`` or None (params).
        target: kept fraction f in (0, 1] of the cost of all maskable weights; default 0.1,
            or with ``nm`` the fraction n / m gives (a given one must match it).
        structure: (r, c) blocks over each weight viewed as (out, in); (1, 1) unstructured.
        distribution: ``global``, ``uniform`` or ``erk``.
        include: module-name globs of the layers to mask (all maskable layers when empty).
        exclude: module-name globs of layers to leave dense.
        input_size: one input's shape without batch; prices cost models that depend on it
            (overriding their own ``input_size``).
        nm: (n, m) for N:M structure over single weights (``structure`` must be 1 x 1).

    Raises:
        ValueError: for a target out of (0, 1] or unreachable (or, with ``nm``, not the
            fraction n / m gives), an unknown distribution or cost model, blocks or N:M groups
            that do not tile a masked layer (naming them), or no layer selected.
    """
    cm = resolve(cost_model, input_size=input_size)
    block_shape = validate_block_shape(structure)
    split = get_distribution(distribution)
    masked = find_targets(model, include, exclude)
    priced = price_layers(model, cm, masked, block_shape, nm)
    masked_layers = [p for p in priced if p.masked]
    masked_cost = math.fsum(p.cost.per_entry * p.entries for p in masked_layers)
    unmasked_cost = math.fsum(p.cost.per_entry * p.entries for p in priced if not p.masked)
    if nm is not None:
        return _nm_plan(model, cm, validate_nm(nm), target, distribution, priced)
    target = 0.1 if target is None else target
    budget = entry_budget(
        target,
        masked_cost,
        unmasked_cost,
        cheapest=min(p.cost.per_entry for p in masked_layers),
        unit=cm.unit,
    )

    units = []
    for p in masked_layers:
        weight = _param(model, p.target.name).detach()
        values = block_values(weight, block_shape).float()  # (n_blocks,), a new tensor
        units.append(values if p.cost.per_entry == 1.0 else values.div_(p.cost.per_entry))
    infos = [
        LayerInfo(p.target.name, p.target.shape, p.cost.per_entry * p.entries)
        for p in masked_layers
    ]
    kept: dict[str, torch.Tensor] = {}
    thresholds: dict[str, float] = {}
    group_of: dict[str, str] = {}  # layer -> the key of its group's threshold
    index_of = {info.name: i for i, info in enumerate(infos)}
    for group in split(infos, budget / masked_cost):
        segments = [(units[i], masked_layers[i].cost.per_entry) for i in group.layers]
        group_cost = math.fsum(infos[i].cost for i in group.layers)
        k = min(group.fraction * group_cost, group_cost)
        threshold = hard_threshold(segments, k)
        thresholds[infos[group.layers[0]].name] = threshold
        for i in group.layers:
            kept[infos[i].name] = units[i] >= threshold
            group_of[infos[i].name] = infos[group.layers[0]].name

    rows = []
    for p in priced:
        weight = _param(model, p.target.name).detach()
        if not p.masked:
            n_kept = int(torch.count_nonzero(block_values(weight, p.block_shape)))
            nonzero = int(torch.count_nonzero(weight))
        else:
            name = p.target.name
            keep = kept[name]
            n_kept = int(torch.count_nonzero(keep))
            if block_shape == (1, 1) and thresholds[group_of[name]] > 0:
                nonzero = n_kept  # u >= t > 0: every kept weight is nonzero
            elif block_shape == (1, 1):
                nonzero = int(torch.count_nonzero(units[index_of[name]]))
            else:
                mask = expand_block_mask(keep, weight.shape, block_shape)
                nonzero = int(torch.count_nonzero(weight * mask))
        rows.append(layer_row(cm, p, n_kept, weight.numel() - nonzero))
    return Plan(
        cost_model={"name": cm.name, "unit": cm.unit, "params": cost_model_params(cm)},
        target=float(target),
        distribution=distribution,
        block_shape=list(block_shape),
        layers=rows,
        totals=totals(cm.unit, rows),
        thresholds=thresholds,
        masks={name: mask.cpu() for name, mask in kept.items()},
    )


def _nm_plan(
    model: nn.Module,
    cm: CostModel,
    nm: NMShape,
    target: float | None,
    distribution: str,
    priced: Sequence[PricedLayer],
) -> Plan:
    """The plan of N:M layers: the n largest |w| of every group of m (see the module doc)."""
    if distribution == "erk":
        raise ValueError(
            f"distribution: 'erk' gives layers different fractions, but nm={nm} keeps n/m of "
            "every layer; use 'global' or 'uniform'"
        )
    if target is not None and (
        isinstance(target, bool) or not isinstance(target, int | float) or not 0 < target <= 1
    ):
        raise ValueError(f"target: expected a cost fraction in (0, 1], got {target!r}")
    masked_cost = math.fsum(p.cost.per_entry * p.entries for p in priced if p.masked)
    unmasked_cost = math.fsum(p.cost.per_entry * p.entries for p in priced if not p.masked)
    fraction = nm_target(nm, masked_cost, unmasked_cost, target)
    n, m = nm
    rows, kept = [], {}
    for p in priced:
        weight = _param(model, p.target.name).detach()
        if p.masked:
            keep = nm_hard_mask(group_view(weight.abs(), m), n).reshape(-1)
            kept[p.target.name] = keep
            n_kept = int(torch.count_nonzero(keep))
            nonzero = int(torch.count_nonzero(weight.reshape(-1) * keep))
        else:
            n_kept = int(torch.count_nonzero(block_values(weight, p.block_shape)))
            nonzero = int(torch.count_nonzero(weight))
        rows.append(layer_row(cm, p, n_kept, weight.numel() - nonzero))
    return Plan(
        cost_model={"name": cm.name, "unit": cm.unit, "params": cost_model_params(cm)},
        target=fraction,
        distribution=distribution,
        block_shape=[1, 1],
        layers=rows,
        totals=totals(cm.unit, rows),
        thresholds={},
        nm=[n, m],
        masks={name: mask.cpu() for name, mask in kept.items()},
    )

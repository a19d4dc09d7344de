"""Sparsification methods: each is a mask update and a forward weight, sharing the machinery.

- ``spartan`` (Tai, Tian and Lim, NeurIPS 2022): forward (w * m) * h with m the cost-weighted
  soft top-k mask and h the hard top-k mask; backward straight through h and through the
  soft top-k's implicit gradient (``masking.SoftMask`` and ``masking.DualNode``).
- ``topkast`` (Jayakumar et al., 2020, in its dual-averaging form): forward w * h, backward
  the identity, so pruned weights keep learning and can come back.
- ``magnitude`` (gradual magnitude pruning, Zhu and Gupta, 2017): forward and backward
  through w * h.

All three anneal the cost fraction the same way and freeze their mask at fine-tune start, after
which training is plain masked training (forward w * M, gradient G * M).

N:M layers (``SparsifierConfig.nm``) are updated by ``update_nm`` instead: every group of m
weights keeps the annealed mass k in [n, m] (``schedule.nm_kept_at``); the hard mask keeps the
ceil(k) largest |w| of each group, and Spartan's soft mask solves one dual per group
(``soft_topk_nm``), its forward being ``masking.NMSoftMask``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from spartan_core import native
from spartan_core.dual import hard_threshold_and_dual
from spartan_core.masking import (
    DualGroup,
    MaskParametrization,
    NMSoftMask,
    SoftMask,
    StraightThrough,
    masked_product,
)
from spartan_core.nm import group_view, kept_count, nm_hard_mask, sort_groups
from spartan_core.soft_topk_nm import cold_start_duals, solve_group_duals
from spartan_core.threshold import hard_threshold, top_threshold_unchecked

logger = logging.getLogger(__name__)

_SMALLEST_FLOAT32 = 1.401298464324817e-45  # u >= this is u > 0 in float32
_FLOOR_SLACK = 1.25  # layers that kept this many times their floor are not checked
_FLOOR_BAND = (0.9, 1.25)  # a reused floor threshold may raise this share of the floor
_NM_FULL_SLACK = 1e-9  # an N:M kept mass this close to m keeps everything
_NM_TOL = {False: 1e-6, True: 1e-10}  # N:M kept mass tolerance (relative): float32, float64


class Method:
    """A sparsification method: how masks are updated and how the forward weight is formed.

    Attributes:
        name: the registry name.
        soft: whether the method keeps a soft mask and couples a group's layers through a
            dual variable (then the layer parametrizations hold a ``soft`` buffer).
    """

    name: ClassVar[str] = ""
    soft: ClassVar[bool] = False

    def update(
        self,
        group: DualGroup,
        weights: Sequence[Tensor],
        fraction: float,
        beta: float,
        *,
        value_scale: str,
        layer_floor: float = 0.0,
    ) -> None:
        """Recompute the group's masks from its layers' current weights (under no_grad)."""
        raise NotImplementedError

    def update_nm(
        self, group: DualGroup, weight: Tensor, kept: float, beta: float, *, value_scale: str
    ) -> None:
        """Recompute an N:M layer's masks (the group's one layer): every group of m weights
        keeps the mass ``kept`` in [n, m] (under no_grad)."""
        raise NotImplementedError

    def forward(self, weight: Tensor, layer: MaskParametrization) -> Tensor:
        """The weight the layer uses in its forward pass."""
        raise NotImplementedError

    def freeze(self, layer: MaskParametrization) -> None:
        """Fix the layer's mask for fine-tuning (forward and gradient masked)."""
        layer.freeze()

    def dual_node(self, group: DualGroup, weights: Sequence[Tensor]) -> Tensor | None:
        """Open the group's dual node for the coming forward pass, if the method needs one."""
        return None


METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method to the registry under ``cls.name``."""
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> Method:
    """A new instance of the registered method ``name``.

    Raises:
        ValueError: naming ``method`` and the valid choices.
    """
    try:
        return METHODS[name]()
    except KeyError:
        raise ValueError(f"method: unknown {name!r}, expected one of {sorted(METHODS)}") from None


def _keep_all(group: DualGroup, fraction: float, beta: float) -> None:
    for layer in group.layers:
        layer.keep_all()
    group.record(fraction, beta)


def _raise_floor(
    layers: Sequence[MaskParametrization],
    units: Sequence[Tensor],
    fraction: float,
    margin: float,
    maxima: Sequence[float | None],
) -> None:
    """Make about the largest ``fraction`` of every layer's entries certain winners.

    Their unit values are raised above every other by ``margin`` (beyond the soft mask's
    reach), so the hard mask keeps them and their soft mask is 1; they spend their share of
    the budget and the rest is shared as before. Only groups of several layers have a floor.
    ``maxima`` are the layers' largest unit values where known.

    The floor is a guard, kept cheap: a layer that kept at least ``_FLOOR_SLACK`` times its
    floor at the last update is left alone (weights move little per step); a floored layer
    reuses its last floor threshold while the number of entries it raises stays within
    ``_FLOOR_BAND`` of the floor, and is re-selected exactly (from the next update) otherwise.
    """
    if fraction <= 0.0 or len(layers) < 2:
        return
    floored = []
    for layer, u in zip(layers, units, strict=True):
        count = math.ceil(fraction * layer.n_entries)
        kept = layer.kept if layer.kept is not None else int(layer.hard.sum())
        if math.isfinite(layer.floor) and kept >= _FLOOR_SLACK * count:
            continue
        if not math.isfinite(layer.floor):
            layer.remember_floor(top_threshold_unchecked(u, count))
        floored.append((layer, u, count))
    if not floored:
        return
    largest = max(float(u.max()) if m is None else m for u, m in zip(units, maxima, strict=True))
    boost = 2.0 * largest + margin
    for layer, u, count in floored:
        top = layer.floor
        if native.usable(u):
            raised = native.raise_to(u, top if top > 0.0 else _SMALLEST_FLOAT32, boost)
        else:  # a top of 0 (mostly zero layer) raises only the nonzero entries
            chosen = torch.gt(u, 0.0) if top <= 0.0 else torch.ge(u, top)
            raised = int(chosen.sum())
            u.masked_fill_(chosen, boost)
        low, high = _FLOOR_BAND
        if not low * count <= raised <= high * count:
            layer.forget_floor()


def _nm_values(layer: MaskParametrization, weight: Tensor) -> tuple[Tensor, float]:
    """v = |w| as float64 (G, m) groups, and the sum of v.

    Raises:
        ValueError: naming the layer if a weight is NaN or infinite.
    """
    assert layer.nm is not None
    values = group_view(weight.detach().abs().to(torch.float64), layer.nm[1])  # (G, m)
    total = float(values.sum())
    if not math.isfinite(total):
        raise ValueError(f"weights: {layer.name} holds NaN or infinite values")
    return values, total


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _warm(value: float) -> float | None:
    return value if math.isfinite(value) else None


@register_method
class Spartan(Method):
    """Soft top-k masks under a cost budget (see the module docstring)."""

    name = "spartan"
    soft = True

    def update(
        self,
        group: DualGroup,
        weights: Sequence[Tensor],
        fraction: float,
        beta: float,
        *,
        value_scale: str,
        layer_floor: float = 0.0,
    ) -> None:
        if fraction >= 1.0:
            _keep_all(group, fraction, beta)
            return
        layers = group.layers
        units, value_sums, maxima = zip(
            *(
                layer.stage_unit_values(weight)
                for layer, weight in zip(layers, weights, strict=True)
            ),
            strict=True,
        )
        total_value = float(sum(value_sums))
        total_cost = sum(layer.cost * layer.n_entries for layer in layers)
        # Scaling the unit values by 1 / S is the same as dividing beta by S: slope b = beta / S.
        scale = total_value / total_cost if value_scale == "mean" and total_value > 0 else 1.0
        slope = beta / scale
        _raise_floor(layers, units, layer_floor * fraction, 64.0 / slope, maxima)
        segments = [(u.view(-1), layer.cost) for u, layer in zip(units, layers, strict=True)]
        threshold, dual, iterations = hard_threshold_and_dual(
            segments,
            fraction * total_cost,
            slope,
            threshold_init=_warm(group.threshold),
            dual_init=_warm(group.dual),
        )
        s_cost = 0.0
        for layer in layers:
            s_cost += layer.cost * layer.fill_soft_and_hard(slope, dual, threshold)
        group.record(
            fraction,
            beta,
            scale=scale,
            dual=dual,
            threshold=threshold,
            s_cost=s_cost,
            iterations=iterations,
        )

    def update_nm(
        self, group: DualGroup, weight: Tensor, kept: float, beta: float, *, value_scale: str
    ) -> None:
        (layer,) = group.layers
        assert layer.nm is not None and layer.soft is not None and layer.nm_dual is not None
        m = layer.nm[1]
        values, total = _nm_values(layer, weight)
        if kept >= m - _NM_FULL_SLACK:
            _keep_all(group, 1.0, beta)
            return
        count = kept_count(kept, m)
        units = values if layer.cost == 1.0 else values / layer.cost  # (G, m)
        scale = total / (layer.cost * values.numel()) if value_scale == "mean" else 1.0
        scale = scale if scale > 0.0 else 1.0
        slope = beta / scale  # b = beta / S, as in ``update``
        ordered, order = sort_groups(values)
        start = cold_start_duals(ordered if units is values else ordered / layer.cost, kept, slope)
        if 0.0 < group.fraction < 1.0:
            # the last step's duals, moved as an all-equal group's would: lam = u - logit(f) / b
            shift = _logit(group.fraction) / group.slope - _logit(kept / m) / slope
            start = torch.where(torch.isfinite(layer.nm_dual), layer.nm_dual + shift, start)
        tol = _NM_TOL[layer.soft.dtype == torch.float64]
        dual, soft, iterations = solve_group_duals(units, kept, slope, start=start, tol=tol)
        hard = nm_hard_mask(values, count, order=order)
        layer.set_nm_masks(hard, count * values.shape[0], soft=soft, dual=dual)
        group.record(kept / m, beta, scale=scale, iterations=iterations)

    def forward(self, weight: Tensor, layer: MaskParametrization) -> Tensor:
        if layer.frozen:
            return masked_product(weight, layer.soft if layer.scaled_forward else layer.hard, layer)
        if layer.nm is not None:
            return NMSoftMask.apply(weight, layer)
        group = layer.group
        return SoftMask.apply(weight, group.node if group is not None else None, layer)

    def dual_node(self, group: DualGroup, weights: Sequence[Tensor]) -> Tensor | None:
        if any(layer.nm is not None for layer in group.layers):
            return None  # every N:M group is its own budget: nothing to couple
        if not group.coupled or any(layer.frozen for layer in group.layers):
            return None
        return group.open_node(weights)


class _HardMethod(Method):
    """Shared update of the hard-mask baselines: hard top-k of the unit values v / c."""

    def update(
        self,
        group: DualGroup,
        weights: Sequence[Tensor],
        fraction: float,
        beta: float,
        *,
        value_scale: str,
        layer_floor: float = 0.0,
    ) -> None:
        if fraction >= 1.0:
            _keep_all(group, fraction, beta)
            return
        units, maxima = zip(
            *(
                layer.unit_values(weight)
                for layer, weight in zip(group.layers, weights, strict=True)
            ),
            strict=True,
        )
        _raise_floor(group.layers, units, layer_floor * fraction, 1.0, maxima)
        total_cost = sum(layer.cost * layer.n_entries for layer in group.layers)
        segments = [(u.view(-1), layer.cost) for u, layer in zip(units, group.layers, strict=True)]
        threshold = hard_threshold(segments, fraction * total_cost, init=_warm(group.threshold))
        for layer, u in zip(group.layers, units, strict=True):
            layer.set_hard(u, threshold)
        group.record(fraction, beta, threshold=threshold)

    def update_nm(
        self, group: DualGroup, weight: Tensor, kept: float, beta: float, *, value_scale: str
    ) -> None:
        (layer,) = group.layers
        assert layer.nm is not None
        m = layer.nm[1]
        values, _ = _nm_values(layer, weight)
        count = kept_count(kept, m)
        layer.set_nm_masks(nm_hard_mask(values, count), count * values.shape[0])
        group.record(min(1.0, kept / m), beta)


@register_method
class TopKast(_HardMethod):
    """Forward w * h, identity backward through h until the mask freezes."""

    name = "topkast"

    def forward(self, weight: Tensor, layer: MaskParametrization) -> Tensor:
        if layer.frozen:
            return masked_product(weight, layer.hard, layer)
        return StraightThrough.apply(weight, layer)


@register_method
class Magnitude(_HardMethod):
    """Gradual magnitude pruning: forward and backward through w * h."""

    name = "magnitude"

    def forward(self, weight: Tensor, layer: MaskParametrization) -> Tensor:
        return masked_product(weight, layer.hard, layer)

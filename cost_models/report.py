"""The cost report: what a (masked or finalized) model costs under a cost model, layer by layer.

Kept entries are counted from the effective weights: a block is kept when any of its weights is
nonzero (for a masked model, ``module.weight`` already is the masked weight), or from explicit
masks ``{parameter name: mask}``. Latency is predicted from the cost model when it prices time,
and measured by deploying the model (``cost_models.deploy``: the fastest measured kernel per
layer) on the measuring device: the report's ``deployment`` puts the measured latency beside the
prediction (``cost_models.measured``), and ``measured_latency`` sums it up. The JSON schema is
documented in docs/cost_models.md (``schema_version`` 2).

N:M layers (``nm=(n, m)``) count single weights (block shape 1 x 1), priced by
``spartan_core.costs.price_targets``; their rows and the report carry ``nm``.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from cost_models.base import (
    check_input_size,
    checked_costs,
    cost_model_params,
    predicts_latency,
)
from cost_models.deployment import deploy
from cost_models.measured import (
    Deployment,
    MeasuredLatency,
    deployment_from_dict,
    deployment_section,
)
from cost_models.registry import resolve
from spartan_core.blocks import (
    BlockShape,
    block_grid,
    block_values,
    expand_block_mask,
    validate_block_shape,
)
from spartan_core.costs import CostModel, LayerCost, price_targets
from spartan_core.layers import MaskTarget, find_targets, get_submodule, maskable_targets
from spartan_core.nm import NMShape, check_nm_tiling, validate_nm

SCHEMA_VERSION = 2


@dataclass
class LayerRow:
    """One maskable layer of the report (see docs/cost_models.md for each field)."""

    name: str
    module: str
    type: str
    masked: bool
    weight_shape: list[int]
    block_shape: list[int]
    entries: int
    kept_entries: int
    density: float
    weights: int
    zero_weights: int
    sparsity: float
    cost_per_entry: float
    fixed_cost: float
    dense_cost: float
    sparse_cost: float
    predicted_dense_latency_ms: float | None = None
    predicted_sparse_latency_ms: float | None = None
    details: dict[str, Any] | None = None
    nm: list[int] | None = None


@dataclass
class Totals:
    """Sums over the layers and the achieved fractions (see docs/cost_models.md)."""

    unit: str
    entries: int
    kept_entries: int
    density: float
    masked_weights: int
    zero_masked_weights: int
    sparsity: float
    dense_cost: float
    sparse_cost: float
    cost_fraction: float
    masked_dense_cost: float
    masked_sparse_cost: float
    masked_cost_fraction: float
    fixed_cost: float
    dense_total_cost: float
    sparse_total_cost: float
    predicted_dense_latency_ms: float | None = None
    predicted_sparse_latency_ms: float | None = None
    predicted_speedup: float | None = None


@dataclass
class CostReport:
    """A cost report: ``layers`` (one row per masked layer), ``totals`` and measured latency."""

    cost_model: dict[str, Any]
    input_size: list[int] | None
    block_shape: list[int]
    layers: list[LayerRow]
    totals: Totals
    measured_latency: MeasuredLatency | None = None
    deployment: Deployment | None = None
    schema_version: int = SCHEMA_VERSION
    nm: list[int] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-able data (the documented schema)."""
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CostReport:
        """Rebuild a report from ``to_dict()`` output."""
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"schema_version: expected {SCHEMA_VERSION}, got {version!r}")
        measured = data.get("measured_latency")
        deployment = data.get("deployment")
        return cls(
            cost_model=dict(data["cost_model"]),
            input_size=data.get("input_size"),
            block_shape=list(data["block_shape"]),
            layers=[LayerRow(**row) for row in data["layers"]],
            totals=Totals(**data["totals"]),
            measured_latency=None if measured is None else MeasuredLatency(**measured),
            deployment=None if deployment is None else deployment_from_dict(deployment),
            nm=data.get("nm"),
        )

    def to_csv(self) -> str:
        """The per-layer table as CSV (header = ``CSV_COLUMNS``; shapes written as 3x64x7x7)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for row in self.layers:
            values = asdict(row)
            writer.writerow([_csv_cell(values[c]) for c in CSV_COLUMNS])
        return buffer.getvalue()


CSV_COLUMNS = [f.name for f in fields(LayerRow) if f.name != "details"]


def _csv_cell(value: Any) -> Any:
    if isinstance(value, list):
        return "x".join(str(v) for v in value)
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return value


@dataclass(frozen=True)
class PricedLayer:
    """A maskable layer with its price: masked layers in the requested block shape or N:M."""

    target: MaskTarget
    masked: bool
    block_shape: BlockShape
    cost: LayerCost
    entries: int
    nm: NMShape | None = None


def price_layers(
    model: nn.Module,
    cost_model: CostModel,
    masked: Sequence[MaskTarget],
    block_shape: BlockShape,
    nm: NMShape | None = None,
) -> list[PricedLayer]:
    """Price every maskable layer of ``model``, in model order.

    Masked layers are priced in ``block_shape``, or as N:M single weights when ``nm`` is
    given (``block_shape`` must then be 1 x 1). Maskable layers left unmasked count at their
    dense cost, priced per weight, or in ``block_shape`` when the cost model cannot price
    single weights (as the Sparsifier does).

    Raises:
        ValueError: if the block shape or the N:M groups do not tile a masked layer, or the
            cost model cannot price a layer.
    """
    masked_names = {t.name for t in masked}
    if nm is not None:
        nm = validate_nm(nm)
        if tuple(block_shape) != (1, 1):
            raise ValueError(
                f"nm: N:M keeps single weights; block_shape must be (1, 1), got {block_shape!r}"
            )
        check_nm_tiling(masked, nm)
    for t in masked:
        block_grid(t, block_shape)
    others = [t for t in maskable_targets(model) if t.name not in masked_names]
    priced_masked = price_targets(cost_model, model, masked, block_shape, nm)
    costs = checked_costs(cost_model, priced_masked, masked)
    shapes: dict[str, BlockShape] = {t.name: block_shape for t in masked}
    if others:
        try:
            priced = cost_model.layer_costs(model, others, (1, 1))
            other_shape: BlockShape = (1, 1)
        except ValueError:
            priced = cost_model.layer_costs(model, others, block_shape)
            other_shape = block_shape
        costs.update(checked_costs(cost_model, priced, others))
        shapes.update({t.name: other_shape for t in others})
    out = []
    for t in maskable_targets(model):
        shape = shapes[t.name]
        is_masked = t.name in masked_names
        out.append(
            PricedLayer(
                t,
                is_masked,
                shape,
                costs[t.name],
                math.prod(block_grid(t, shape)),
                nm if is_masked else None,
            )
        )
    return out


def layer_row(
    cost_model: CostModel,
    layer: PricedLayer,
    kept_entries: int,
    zero_weights: int,
) -> LayerRow:
    """One report row from a priced layer, its kept entries and its zero weights."""
    t, cost = layer.target, layer.cost
    kept = int(kept_entries)
    zeros = int(zero_weights)
    latency = predicts_latency(cost_model)
    details_of = getattr(cost_model, "layer_details", None)
    return LayerRow(
        name=t.name,
        module=t.module_name,
        type=t.kind,
        masked=layer.masked,
        weight_shape=list(t.shape),
        block_shape=list(layer.block_shape),
        entries=layer.entries,
        kept_entries=kept,
        density=kept / layer.entries,
        weights=t.numel,
        zero_weights=zeros,
        sparsity=zeros / t.numel,
        cost_per_entry=cost.per_entry,
        fixed_cost=cost.fixed,
        dense_cost=cost.per_entry * layer.entries,
        sparse_cost=cost.per_entry * kept,
        predicted_dense_latency_ms=_latency(cost_model, t.name, cost, layer.entries, latency),
        predicted_sparse_latency_ms=_latency(cost_model, t.name, cost, kept, latency),
        details=details_of(t.name) if callable(details_of) and layer.masked else None,
        nm=None if layer.nm is None else list(layer.nm),
    )


def _latency(
    cost_model: CostModel, name: str, cost: LayerCost, kept: int, latency: bool
) -> float | None:
    """A layer's predicted latency: the cost model's own per-layer prediction where it has one
    (``profiled``: the fitted line, or dense where that is faster, as deployment chooses), else
    its cost in ms."""
    if not latency:
        return None
    layer_ms = getattr(cost_model, "layer_latency_ms", None)
    own = layer_ms(name, kept) if callable(layer_ms) else None
    return own if own is not None else cost_model.latency_ms(cost, kept)


def totals(unit: str, rows: Sequence[LayerRow]) -> Totals:
    """Totals over all rows; ``sparsity`` and the ``masked_*`` fields over masked rows only."""
    masked = [r for r in rows if r.masked]
    entries = sum(r.entries for r in rows)
    kept = sum(r.kept_entries for r in rows)
    masked_weights = sum(r.weights for r in masked)
    zeros = sum(r.zero_weights for r in masked)
    dense = math.fsum(r.dense_cost for r in rows)
    sparse = math.fsum(r.sparse_cost for r in rows)
    masked_dense = math.fsum(r.dense_cost for r in masked)
    masked_sparse = math.fsum(r.sparse_cost for r in masked)
    fixed = math.fsum(r.fixed_cost for r in rows)
    dense_ms = sparse_ms = speedup = None
    if rows and all(r.predicted_dense_latency_ms is not None for r in rows):
        dense_ms = math.fsum(r.predicted_dense_latency_ms or 0.0 for r in rows)
        sparse_ms = math.fsum(r.predicted_sparse_latency_ms or 0.0 for r in rows)
        speedup = dense_ms / sparse_ms if sparse_ms > 0 else None
    return Totals(
        unit=unit,
        entries=entries,
        kept_entries=kept,
        density=kept / entries if entries else 0.0,
        masked_weights=masked_weights,
        zero_masked_weights=zeros,
        sparsity=zeros / masked_weights if masked_weights else 0.0,
        dense_cost=dense,
        sparse_cost=sparse,
        cost_fraction=sparse / dense if dense > 0 else 0.0,
        masked_dense_cost=masked_dense,
        masked_sparse_cost=masked_sparse,
        masked_cost_fraction=masked_sparse / masked_dense if masked_dense > 0 else 0.0,
        fixed_cost=fixed,
        dense_total_cost=dense + fixed,
        sparse_total_cost=sparse + fixed,
        predicted_dense_latency_ms=dense_ms,
        predicted_sparse_latency_ms=sparse_ms,
        predicted_speedup=speedup,
    )


def cost_report(
    model: nn.Module,
    cost_model: CostModel | str | Mapping[str, Any] | None = None,
    input_size: Sequence[int] | None = None,
    *,
    block_shape: BlockShape = (1, 1),
    nm: NMShape | None = None,
    masks: Mapping[str, torch.Tensor] | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    latency_repeats: int = 10,
    batch_size: int = 1,
    device: torch.device | str | None = None,
    deployment: Mapping[str, Any] | None = None,
) -> CostReport:
    """Price every maskable layer of ``model`` and measure dense versus deployed latency.

    Args:
        model: a masked model (parametrized weights, e.g. from the Sparsifier), a finalized one
            or any model with explicit ``masks``.
        cost_model: a cost model, a registered name, ``{"name", "params"}`` or None (params).
        input_size: one input's shape without batch, e.g. (3, 224, 224). It prices cost models
            that depend on it (overriding their own) and sizes the latency measurement;
            defaults to the cost model's ``input_size`` when it has one.
        block_shape: the (r, c) blocks of the masked layers (1 x 1: single weights).
        nm: (n, m) when the masked layers are N:M (single weights, priced as N:M by the cost
            model, e.g. the index metadata of ``memory``); rows and report then carry ``nm``.
        masks: ``{parameter name: mask}``, each mask weight-shaped, block-grid shaped or flat
            per block; nonzero = kept. Its keys then say which layers are masked.
        include: module-name globs of the masked layers (when neither masks nor masking
            parametrizations say which; default all).
        exclude: module-name globs excluded from those.
        latency_repeats: 0 skips measuring; any positive value measures (the deployment
            sizes its own repeats to a time budget per candidate kernel).
        batch_size: samples per timed forward (a random input of this batch size).
        device: where to deploy and time; default the model's device.
        deployment: a ``cost_models.deploy`` report (``deploy_report``) measured already, e.g.
            on a real validation batch: used instead of measuring here.

    Every maskable layer gets a row (``masked`` says whether it is masked); kept entries are
    blocks with a nonzero effective weight, or nonzero ``masks`` entries. Masked layers are
    the keys of ``masks``; else the maskable weights carrying a parametrization; else those
    chosen by include/exclude. Totals follow ``SparsifierConfig``: ``cost_fraction`` is over
    every maskable layer (unmasked ones at full cost), fixed costs apart.

    Raises:
        ValueError: for unknown mask names or shapes, bad sizes, or an unknown cost model.
    """
    cm = resolve(cost_model, input_size=input_size)
    block_shape = validate_block_shape(block_shape)
    if input_size is None and getattr(cm, "input_size", None) is not None:
        input_size = cm.input_size
    size = None if input_size is None else check_input_size(input_size)
    for field, value, low in (
        ("latency_repeats", latency_repeats, 0),
        ("batch_size", batch_size, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{field}: expected an integer >= {low}, got {value!r}")
    if latency_repeats and size is None and deployment is None:
        raise ValueError("input_size: needed to measure latency (or pass latency_repeats=0)")

    masked = _report_targets(model, masks, include, exclude)
    rows = []
    for layer in price_layers(model, cm, masked, block_shape, nm):
        layer_masks = masks if layer.masked else None
        kept = _block_mask(model, layer.target, layer.block_shape, layer_masks)
        weight = _effective_weight(model, layer.target, layer.block_shape, layer_masks, kept)
        zeros = weight.numel() - int(torch.count_nonzero(weight))
        rows.append(layer_row(cm, layer, int(torch.count_nonzero(kept)), zeros))
    if deployment is None and latency_repeats:
        assert size is not None
        deployment = measure_deployment(
            model,
            masked,
            size,
            block_shape=block_shape,
            masks=masks,
            batch_size=batch_size,
            device=device,
        )
    deployed = None
    if deployment is not None:
        deployed = deployment_section(deployment, rows, model_latency=_model_latency(cm, rows))
    return CostReport(
        cost_model={"name": cm.name, "unit": cm.unit, "params": cost_model_params(cm)},
        input_size=None if size is None else list(size),
        block_shape=list(block_shape),
        layers=rows,
        totals=totals(cm.unit, rows),
        measured_latency=None if deployed is None else MeasuredLatency.from_deployment(deployed),
        deployment=deployed,
        nm=None if nm is None else list(validate_nm(nm)),
    )


def _model_latency(cost_model: CostModel, rows: Sequence[LayerRow]) -> tuple[float, float] | None:
    """(dense, sparse) end-to-end latency the cost model predicts for the whole model, where it
    predicts one (``profiled``'s ``model_latency_ms``), else None."""
    model_ms = getattr(cost_model, "model_latency_ms", None)
    if not callable(model_ms):
        return None
    sparse = model_ms({r.name: r.kept_entries for r in rows if r.masked})
    dense = model_ms({})
    return None if sparse is None or dense is None else (dense, sparse)


def _report_targets(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor] | None,
    include: Sequence[str] | None,
    exclude: Sequence[str] | None,
) -> list[MaskTarget]:
    if masks is not None:
        by_name = {t.name: t for t in maskable_targets(model)}
        unknown = sorted(set(masks) - set(by_name))
        if unknown:
            raise ValueError(
                f"masks: {unknown} are not maskable weights of the model "
                f"(e.g. {sorted(by_name)[:5]})"
            )
        if not masks:
            raise ValueError("masks: empty; give at least one mask or None")
        return [t for t in by_name.values() if t.name in masks]
    targets = find_targets(model, include, exclude)
    masked = [
        t
        for t in targets
        if parametrize.is_parametrized(get_submodule(model, t.module_name), t.param_name)
    ]
    return masked or targets


def _block_mask(
    model: nn.Module,
    target: MaskTarget,
    block_shape: BlockShape,
    masks: Mapping[str, torch.Tensor] | None,
) -> torch.Tensor:
    """Kept blocks of one layer, flat (n_blocks,) bool."""
    n_rows, n_cols = block_grid(target, block_shape)
    if masks is None:
        weight = getattr(get_submodule(model, target.module_name), target.param_name)
        return block_values(weight.detach(), block_shape) != 0
    mask = torch.as_tensor(masks[target.name]).detach()
    if mask.numel() == target.numel:
        return block_values(mask.reshape(target.shape).float(), block_shape) != 0
    if mask.numel() == n_rows * n_cols:
        return mask.reshape(-1) != 0
    raise ValueError(
        f"masks[{target.name!r}]: shape {tuple(mask.shape)} is neither the weight's "
        f"{target.shape} nor its {n_rows}x{n_cols} grid of {block_shape[0]}x{block_shape[1]} "
        f"blocks"
    )


def _effective_weight(
    model: nn.Module,
    target: MaskTarget,
    block_shape: BlockShape,
    masks: Mapping[str, torch.Tensor] | None,
    block_mask: torch.Tensor,
) -> torch.Tensor:
    weight = getattr(get_submodule(model, target.module_name), target.param_name).detach()
    if masks is None:
        return weight
    keep = expand_block_mask(block_mask.to(weight.device), weight.shape, block_shape)
    return weight * keep


def dense_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with the masking machinery baked in and dropped.

    For a masked model (one carrying parametrizations), each parametrized tensor becomes a
    plain parameter holding its effective value, and the forward hooks (a Sparsifier's) are
    left out of the copy; the objects owning those hooks are not copied.
    """
    masked = any(parametrize.is_parametrized(m) for m in model.modules())
    memo: dict[int, Any] = {}
    if masked:
        for module in model.modules():
            for hooks in (module._forward_pre_hooks, module._forward_hooks):
                for hook in hooks.values():
                    owner = getattr(hook, "__self__", None)
                    if owner is not None and not isinstance(owner, nn.Module):
                        memo[id(owner)] = owner  # shared, not copied: the hook is dropped
    copied = copy.deepcopy(model, memo)
    if masked:
        for module in copied.modules():
            module._forward_pre_hooks.clear()
            module._forward_hooks.clear()
            if parametrize.is_parametrized(module):
                _bake_parametrizations(module)
    return copied


def _bake_parametrizations(module: nn.Module) -> None:
    """Turn a parametrized module (a copy) back into its plain class with effective values.

    ``parametrize.remove_parametrizations`` would delete the property from the injected class,
    which the copy shares with the original model, so the class is swapped here instead.
    """
    with torch.no_grad():
        values = {name: getattr(module, name).detach().clone() for name in module.parametrizations}
    del module._modules["parametrizations"]
    module.__class__ = module.__class__.__bases__[0]
    for name, value in values.items():
        setattr(module, name, nn.Parameter(value, requires_grad=False))


def measure_deployment(
    model: nn.Module,
    targets: Sequence[MaskTarget],
    input_size: Sequence[int],
    *,
    block_shape: BlockShape = (1, 1),
    masks: Mapping[str, torch.Tensor] | None = None,
    batch_size: int = 1,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """``cost_models.deploy`` of a dense copy of ``model`` on a random input; its report.

    The copy keeps the effective weights (masks baked in, explicit ``masks`` applied), so the
    dense side costs what the unpruned model costs and the deployed side runs the kernels
    deployment picks; a random (batch_size, *input_size) input in the model's float dtype.
    """
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    dense = dense_copy(model).to(device).eval()
    if masks is not None:
        with torch.no_grad():
            for t in targets:
                weight = getattr(get_submodule(dense, t.module_name), t.param_name)
                keep = _block_mask(dense, t, block_shape, masks)
                weight.mul_(expand_block_mask(keep.to(device), weight.shape, block_shape))
    dtype = next((p.dtype for p in dense.parameters() if p.is_floating_point()), torch.float32)
    x = torch.randn((batch_size, *input_size), device=device, dtype=dtype)
    return deploy(dense, x, device=device).deploy_report

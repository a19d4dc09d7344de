"""Checks of a job spec or a plan request that need the model registry, torch or the store.

The pydantic schema (``spartan.spec``) already rejects unknown fields and out-of-range values;
``validate_spec`` adds what needs more than the schema: does the architecture exist and take
the input size, does the cost model exist and accept its parameters, do the layer patterns
select anything, do the blocks or N:M groups tile the layers, can the target be reached (with
N:M: is it the one n / m gives), are paths under the data roots, does a checkpoint reference
exist, does the global batch split across the ``resources.devices`` ranks. ``check_model``
and ``check_target`` are shared with one-shot plans, whose target fields sit at the top of the
request rather than under ``sparsity`` (``where``).

Every error is a ``FieldError`` located in the spec, e.g. ``("model", "name")``; its text is
``model.name: unknown torchvision architecture 'resnet1000'; ...``. Models are built on the
meta device, so validating a large architecture allocates nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from runtime.costs import build_cost_model, cost_model_params
from runtime.models import check_architecture, check_pretrained, create_model
from spartan.errors import FieldError, Loc, core_reason
from spartan.resolve import checkpoint_file, data_path
from spartan.settings import Settings
from spartan.spec import JobSpec, ModelSpec, TargetSpec
from spartan.store import JobStore
from spartan_core.blocks import num_entries
from spartan_core.costs import CostModel, price_targets
from spartan_core.layers import MaskTarget, find_targets, maskable_targets
from spartan_core.nm import check_nm_tiling, nm_target

log = logging.getLogger(__name__)

DIGITS_CLASSES = 10
DIGITS_SAMPLES = 1797
JOB_TARGET_LOC = ("sparsity",)


def validate_spec(
    spec: JobSpec,
    settings: Settings,
    *,
    owner: str | None = None,
    store: JobStore | None = None,
) -> None:
    """Raise ``FieldError`` if ``spec`` cannot run.

    Args:
        spec: the parsed job specification.
        settings: where the data roots, upload store and limits come from.
        owner: the submitting user; an upload id must belong to them (any owner when None).
        store: the store holding the uploads (default: the store of ``settings``).
    """
    _check_resources(spec, settings)
    _check_tracking(spec, settings)
    checkpoint_file(spec.model.checkpoint, settings=settings, owner=owner, store=store)
    _check_data(spec, settings)
    params = cost_model_params(spec.cost_model, spec.model.input_size, settings)
    cost_model = build_cost_model(spec.cost_model.name, params)
    model = check_model(spec.model)
    check_target(model, spec.sparsity, cost_model, where=JOB_TARGET_LOC)


def check_model(spec: ModelSpec) -> nn.Module:
    """The architecture ``spec`` names, built on the meta device and probed with one input.

    Raises:
        FieldError: at ``model.name`` for an unknown architecture or, with ``model.pretrained``,
            an unknown tag or (offline) weights missing from the Hugging Face cache; at
            ``model.pretrained`` for a source without pretrained weights; at
            ``model.input_size`` for an input the architecture cannot take.
    """
    try:
        check_architecture(spec.source, spec.name)
    except ValueError as exc:
        raise FieldError(("model", "name"), core_reason(exc, "model.name")) from None
    check_pretrained(spec)  # the tag is known; offline, the weights are in the HF cache
    with torch.device("meta"):
        try:
            model = create_model(spec).eval()
        except ValueError as exc:
            # model.name: an hf-hub: id whose config cannot be read; else the input size.
            key = "name" if str(exc).startswith("model.name: ") else "input_size"
            raise FieldError(("model", key), core_reason(exc, f"model.{key}")) from None
        try:
            model(torch.empty((1, *spec.input_size)))
        except NotImplementedError:
            log.info("%s: no meta kernel for some operator; input size not probed", spec.name)
        except (RuntimeError, ValueError, AssertionError) as exc:
            # timm/torchvision use assert for input-size checks (e.g. ViT patch grids).
            raise FieldError(
                ("model", "input_size"),
                f"{spec.name} cannot take an input of shape {list(spec.input_size)}: {exc}",
            ) from exc
    return model


def check_target(
    model: nn.Module, target: TargetSpec, cost_model: CostModel, *, where: Loc
) -> None:
    """Check the layer selection, the structure and the budget of ``target`` on ``model``.

    As in ``SparsifierConfig``: the kept cost fraction is of the cost of every maskable weight
    of the model; maskable layers left dense by include/exclude count at full cost, so the
    masked ones must make up the difference, keeping at least one entry. With N:M the masked
    layers keep n / m, and a given target must be the whole-model fraction that gives.

    Args:
        where: the location of the target's fields (``("sparsity",)`` in a job spec, ``()``
            in a plan request).

    Raises:
        FieldError: at ``<where>.include``/``exclude``/``nm``/``block_shape``/``sparsity``/
            ``cost_fraction``, or ``cost_model`` when the cost model cannot price the layers.
    """
    selection = "include" if target.include else "exclude"
    try:
        targets = find_targets(model, target.include, target.exclude)
    except ValueError as exc:
        raise FieldError((*where, selection), core_reason(exc, "model")) from None
    if target.nm is not None:
        try:
            check_nm_tiling(targets, target.nm)
        except ValueError as exc:
            raise FieldError((*where, "nm"), core_reason(exc, "nm")) from None
    try:
        entries = {t.name: num_entries(t, target.block_shape) for t in targets}
    except ValueError as exc:
        raise FieldError((*where, "block_shape"), core_reason(exc, "block_shape")) from None
    try:
        costs = price_targets(cost_model, model, targets, target.block_shape, target.nm)
    except ValueError as exc:
        raise FieldError(("cost_model",), core_reason(exc, "cost_model")) from None
    except NotImplementedError:
        # A cost model that measures (profiled) cannot price a meta-device model; the
        # Sparsifier checks the target when the job starts.
        log.info("cost model %s not checked on the meta device", cost_model)
        return
    masked_cost = sum(costs[n].per_entry * entries[n] for n in entries)
    dense_cost = _dense_cost(model, targets, cost_model)
    if dense_cost is None:
        return
    field = (*where, "sparsity" if target.sparsity is not None else "cost_fraction")
    if target.nm is not None:
        try:
            nm_target(target.nm, masked_cost, dense_cost, target.target, field="target")
        except ValueError as exc:
            raise FieldError(field, core_reason(exc, "target")) from None
        return
    _check_budget(target.target, masked_cost, dense_cost, costs, cost_model, field)


def _dense_cost(
    model: nn.Module, targets: Sequence[MaskTarget], cost_model: CostModel
) -> float | None:
    """The full cost of the maskable layers left dense; None when the cost model cannot price
    them per weight (e.g. a per-block latency table: the Sparsifier checks the budget)."""
    selected = {t.name for t in targets}
    dense = [t for t in maskable_targets(model) if t.name not in selected]
    if not dense:
        return 0.0
    try:
        dense_costs = cost_model.layer_costs(model, dense, (1, 1))
    except ValueError:
        log.info("not checking the target: %s cannot price the unmasked layers", cost_model)
        return None
    return sum(dense_costs[t.name].per_entry * t.numel for t in dense)


def _check_budget(
    target: float | None,
    masked_cost: float,
    dense_cost: float,
    costs: dict,
    cost_model: CostModel,
    field: Loc,
) -> None:
    """The masked layers must be able to keep at least one entry within the budget."""
    assert target is not None  # the spec requires one without nm
    budget = target * (masked_cost + dense_cost) - dense_cost
    cheapest = min(cost.per_entry for cost in costs.values())
    if budget < cheapest * (1 - 1e-9):
        unit = getattr(cost_model, "unit", "")
        share = dense_cost / (masked_cost + dense_cost)
        raise FieldError(
            field,
            f"kept fraction {target:g} cannot be reached: the layers left dense by "
            f"include/exclude cost {dense_cost:g} {unit}, {share:.4g} of the maskable total, and "
            "the masked layers must keep at least one entry",
        )


def _check_resources(spec: JobSpec, settings: Settings) -> None:
    limit = spec.resources.time_limit_s
    if limit > settings.job_time_limit_s:
        raise FieldError(
            ("resources", "time_limit_s"),
            f"{limit} s is above this service's limit of {settings.job_time_limit_s} s",
        )
    check_devices(spec)


def check_devices(spec: JobSpec) -> None:
    """The global batch must split evenly across ``resources.devices`` ranks.

    Raises:
        FieldError: at ``training.batch_size`` when it is not a multiple of the devices.
    """
    devices, batch = spec.resources.devices, spec.training.batch_size
    if batch % devices:
        raise FieldError(
            ("training", "batch_size"),
            f"{batch} is the global batch and must split evenly across resources.devices="
            f"{devices} ranks; use a multiple of {devices}",
        )


def _check_tracking(spec: JobSpec, settings: Settings) -> None:
    uri = spec.tracking.mlflow
    if not isinstance(uri, str) or uri == settings.mlflow_tracking_uri:
        return
    allowed = [a.rstrip("/") for a in settings.mlflow_allowed_uris]
    if not any(uri.rstrip("/") == a or uri.startswith(a + "/") for a in allowed):
        raise FieldError(
            ("tracking", "mlflow"),
            f"{uri[:200]!r} is not a tracking server this service allows "
            f"(SPARTAN_MLFLOW_ALLOWED_URIS: {', '.join(allowed) or 'none'}); leave it out to "
            "use the service's",
        )


def _check_data(spec: JobSpec, settings: Settings) -> None:
    data = spec.data
    if data.source == "digits" and spec.model.num_classes < DIGITS_CLASSES:
        raise FieldError(
            ("model", "num_classes"),
            f"digits has {DIGITS_CLASSES} classes, got {spec.model.num_classes}",
        )
    train_size = None
    if data.source == "digits":
        train_size = DIGITS_SAMPLES - max(1, round(DIGITS_SAMPLES * data.val_fraction))
    elif data.source == "synthetic":
        train_size = data.num_samples - max(1, round(data.num_samples * data.val_fraction))
    if train_size is not None and train_size < spec.training.batch_size:
        raise FieldError(
            ("training", "batch_size"),
            f"{spec.training.batch_size} is larger than the training split "
            f"({train_size} samples of {data.source})",
        )
    if data.source == "imagefolder":
        assert data.path is not None  # the schema requires it
        root = data_path(data.path, settings, loc=("data", "path"))
        for split in ("train", "val"):
            folder = root / split
            if not folder.is_dir():
                raise FieldError(("data", "path"), f"{data.path!r} has no {split}/ folder")
            classes = [p for p in folder.iterdir() if p.is_dir()]
            if not classes:
                raise FieldError(
                    ("data", "path"), f"{split}/ of {data.path!r} has no class folders"
                )
            if len(classes) > spec.model.num_classes:
                raise FieldError(
                    ("model", "num_classes"),
                    f"{data.path!r} {split}/ has {len(classes)} classes, "
                    f"more than num_classes={spec.model.num_classes}",
                )

"""Checks of a job specification that need the model registry, torch or the store.

The pydantic schema (``spartan.spec``) already rejects unknown fields and out-of-range values;
``validate_spec`` adds what needs more than the schema: does the architecture exist, does the
cost model exist and accept its parameters, do the layer patterns select anything, do the blocks
or N:M groups tile the layers, can the target be reached (with N:M: is it the one n / m
gives), are paths under the data roots, does a checkpoint reference exist. Every error is a
``ValueError`` whose message starts with the dotted field path, e.g.
``model.name: unknown torchvision architecture 'resnet1000'; ...``.

The model is built on the meta device, so validating a large architecture allocates nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from spartan.settings import Settings
from spartan.spec import JobSpec, check_paths, resolve_data_path

log = logging.getLogger(__name__)

DIGITS_CLASSES = 10
DIGITS_SAMPLES = 1797


def validate_spec(spec: JobSpec, settings: Settings, *, owner: str | None = None) -> None:
    """Raise ValueError (message starting with the field path) if ``spec`` cannot run.

    Args:
        spec: the parsed job specification.
        settings: where the data roots, upload store and limits come from.
        owner: the submitting user; an upload id must belong to them (any owner when None).
    """
    _check_resources(spec, settings)
    check_paths(spec, settings.data_roots)
    _check_checkpoint(spec, settings, owner)
    _check_data(spec, settings)
    cost_params = resolve_cost_params(spec, settings)
    _check_model_and_target(spec, cost_params)


def resolve_cost_params(spec: JobSpec, settings: Settings) -> dict[str, Any]:
    """The cost model's constructor parameters, completed from the job spec.

    A cost model that takes ``input_size`` and was not given one gets the model's input size;
    a latency table given as a file path must lie under a data root.

    Raises:
        ValueError: naming ``cost_model.name`` or ``cost_model.params.<name>``.
    """
    import cost_models

    name = spec.cost_model.name
    known = cost_models.available()
    if name not in known:
        raise ValueError(f"cost_model.name: unknown cost model {name!r}; known: {', '.join(known)}")
    params = dict(spec.cost_model.params)
    accepted = {p["name"] for p in cost_models.describe(name)[0]["parameters"]}
    if "input_size" in accepted and "input_size" not in params:
        params["input_size"] = list(spec.model.input_size)
    table = params.get("table")
    if isinstance(table, str):
        try:
            params["table"] = str(resolve_data_path(table, settings.data_roots))
        except ValueError as exc:
            raise ValueError(f"cost_model.params.table: {exc}") from None
    return params


def _check_resources(spec: JobSpec, settings: Settings) -> None:
    limit = spec.resources.time_limit_s
    if limit > settings.job_time_limit_s:
        raise ValueError(
            f"resources.time_limit_s: {limit} s is above this service's limit of "
            f"{settings.job_time_limit_s} s"
        )


def _check_checkpoint(spec: JobSpec, settings: Settings, owner: str | None) -> None:
    from worker.models import CHECKPOINT_SUFFIXES

    ref = spec.model.checkpoint
    if ref is None:
        return
    if ref.startswith("upl_"):
        from spartan.store import get_store

        upload = get_store(settings.database_url).get_upload(upload_id=ref, owner=owner)
        if upload is None:
            raise ValueError(f"model.checkpoint: no upload {ref!r}")
        name = upload.filename
    else:
        name = ref
    if not name.lower().endswith(CHECKPOINT_SUFFIXES):
        raise ValueError(
            f"model.checkpoint: {Path(name).name!r} must be a .safetensors, .pt or .pth file"
        )


def _check_data(spec: JobSpec, settings: Settings) -> None:
    data = spec.data
    if data.source == "digits" and spec.model.num_classes < DIGITS_CLASSES:
        raise ValueError(
            f"model.num_classes: digits has {DIGITS_CLASSES} classes, got {spec.model.num_classes}"
        )
    train_size = None
    if data.source == "digits":
        train_size = DIGITS_SAMPLES - max(1, round(DIGITS_SAMPLES * data.val_fraction))
    elif data.source == "synthetic":
        train_size = data.num_samples - max(1, round(data.num_samples * data.val_fraction))
    if train_size is not None and train_size < spec.training.batch_size:
        raise ValueError(
            f"training.batch_size: {spec.training.batch_size} is larger than the training "
            f"split ({train_size} samples of {data.source})"
        )
    if data.source == "imagefolder":
        assert data.path is not None  # the schema requires it
        root = resolve_data_path(data.path, settings.data_roots)
        for split in ("train", "val"):
            folder = root / split
            if not folder.is_dir():
                raise ValueError(f"data.path: {data.path!r} has no {split}/ folder")
            classes = [p for p in folder.iterdir() if p.is_dir()]
            if not classes:
                raise ValueError(f"data.path: {split}/ of {data.path!r} has no class folders")
            if len(classes) > spec.model.num_classes:
                raise ValueError(
                    f"model.num_classes: {data.path!r} {split}/ has {len(classes)} classes, "
                    f"more than num_classes={spec.model.num_classes}"
                )


def _check_model_and_target(spec: JobSpec, cost_params: dict[str, Any]) -> None:
    """Build the model on the meta device and check layers, blocks, cost model and target."""
    import torch

    import cost_models
    from spartan_core.blocks import num_entries
    from spartan_core.costs import price_targets
    from spartan_core.layers import find_targets
    from spartan_core.nm import check_nm_tiling
    from worker.models import create_model

    with torch.device("meta"):
        model = create_model(spec.model).eval()
        try:
            model(torch.empty((1, *spec.model.input_size)))
        except NotImplementedError:
            log.info("%s: no meta kernel for some operator; input size not probed", spec.model.name)
        except (RuntimeError, ValueError, AssertionError) as exc:
            # timm/torchvision use assert for input-size checks (e.g. ViT patch grids).
            raise ValueError(
                f"model.input_size: {spec.model.name} cannot take an input of shape "
                f"{list(spec.model.input_size)}: {exc}"
            ) from exc
    sparsity = spec.sparsity
    try:
        targets = find_targets(model, sparsity.include, sparsity.exclude)
    except ValueError as exc:
        field = "sparsity.include" if sparsity.include else "sparsity.exclude"
        raise ValueError(f"{field}: {_strip_field(exc)}") from None
    if sparsity.nm is not None:
        try:
            check_nm_tiling(targets, sparsity.nm)
        except ValueError as exc:
            raise ValueError(f"sparsity.nm: {_strip_field(exc)}") from None
    try:
        entries = {t.name: num_entries(t, sparsity.block_shape) for t in targets}
    except ValueError as exc:
        raise ValueError(f"sparsity.block_shape: {_strip_field(exc)}") from None
    try:
        cost_model = cost_models.get(spec.cost_model.name, **cost_params)
    except ValueError as exc:
        raise ValueError(_with_prefix(str(exc), "cost_model.params")) from None
    try:
        costs = price_targets(cost_model, model, targets, sparsity.block_shape, sparsity.nm)
    except ValueError as exc:
        raise ValueError(_with_prefix(str(exc), "cost_model.params")) from None
    except NotImplementedError:
        # A cost model that measures (profiled) cannot price a meta-device model; the
        # Sparsifier checks the target when the job starts.
        log.info("cost model %r not checked on the meta device", spec.cost_model.name)
        return
    field = "sparsity.sparsity" if sparsity.sparsity is not None else "sparsity.cost_fraction"
    _check_target(
        model, targets, costs, entries, cost_model, sparsity.target, field, nm=sparsity.nm
    )


def _check_target(
    model: Any,
    targets: list[Any],
    costs: dict[str, Any],
    entries: dict[str, int],
    cost_model: Any,
    target: float | None,
    field: str,
    *,
    nm: tuple[int, int] | None = None,
) -> None:
    """Can the kept cost fraction ``target`` be reached?

    As in ``SparsifierConfig``: the fraction is of the cost of every maskable weight of the
    model; maskable layers left dense by include/exclude count at full cost, so the masked ones
    must make up the difference, keeping at least one entry. With N:M the masked layers keep
    n / m, and a given target must be the whole-model fraction that gives.
    """
    from spartan_core.layers import maskable_targets
    from spartan_core.nm import nm_target

    selected = {t.name for t in targets}
    dense = [t for t in maskable_targets(model) if t.name not in selected]
    masked_cost = sum(costs[n].per_entry * entries[n] for n in entries)
    dense_cost = 0.0
    if dense:
        try:
            dense_costs = cost_model.layer_costs(model, dense, (1, 1))
        except ValueError:
            # The cost model cannot price these layers per weight (e.g. a per-block latency
            # table); the Sparsifier checks the budget when the job starts.
            log.info("not checking the target: %s cannot price the unmasked layers", cost_model)
            return
        dense_cost = sum(dense_costs[t.name].per_entry * t.numel for t in dense)
    if nm is not None:
        nm_target(nm, masked_cost, dense_cost, target, field=field)
        return
    assert target is not None  # the spec requires one without nm
    budget = target * (masked_cost + dense_cost) - dense_cost
    cheapest = min(costs[n].per_entry for n in entries)
    if budget < cheapest * (1 - 1e-9):
        unit = getattr(cost_model, "unit", "")
        share = dense_cost / (masked_cost + dense_cost)
        raise ValueError(
            f"{field}: kept fraction {target:g} cannot be reached: the layers left dense by "
            f"include/exclude cost {dense_cost:g} {unit}, {share:.4g} of the maskable total, and "
            f"the masked layers must keep at least one entry"
        )


def _strip_field(exc: ValueError) -> str:
    """The message of a core error without its own leading ``field:`` tag."""
    text = str(exc)
    head, sep, rest = text.partition(": ")
    return rest if sep and head.replace(".", "").replace("_", "").isalnum() else text


def _with_prefix(message: str, default: str) -> str:
    """Keep messages already naming a ``cost_model`` field; prefix the others."""
    return message if message.startswith("cost_model") else f"{default}: {message}"

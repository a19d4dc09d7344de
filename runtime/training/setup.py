"""Everything a training run is built from, set up in one place from the job spec."""

from __future__ import annotations

import contextlib
import logging
import random
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from runtime.costs import build_cost_model, cost_model_params
from runtime.datasets import DataSplits, EpochBatchSampler, build_datasets, eval_loader
from runtime.models import create_model, load_checkpoint
from runtime.training.evaluation import AmpFn
from spartan.resolve import checkpoint_file
from spartan.settings import Settings
from spartan.spec import JobSpec, SparsitySpec, TrainingSpec
from spartan_core import SparsifierConfig
from spartan_core.costs import CostModel
from spartan_core.device import autocast, needs_grad_scaler
from spartan_core.layers import maskable_targets

log = logging.getLogger(__name__)


@dataclass
class RunSetup:
    """The fixed parts of a run: data, model, cost model, configuration, loss and scaler.

    Attributes:
        steps_per_epoch: full training batches per epoch.
        total_steps: ``steps_per_epoch * epochs``, the Sparsifier's schedule length.
        maskable_weights: weights of every maskable layer (the sparsity's denominator).
        cost_params: the cost model's parameters, completed (written to ``spec.json``).
        checkpoint_every: steps between checkpoints (0: only at epoch ends).
        amp: the autocast context for forward passes (a null context when off).
    """

    data: DataSplits
    steps_per_epoch: int
    total_steps: int
    model: nn.Module
    maskable_weights: int
    cost_params: dict[str, Any]
    cost_model: CostModel
    config: SparsifierConfig
    criterion: nn.Module
    scaler: torch.amp.GradScaler
    val_loader: DataLoader
    checkpoint_every: int
    amp: AmpFn


def build_run(
    spec: JobSpec, settings: Settings, *, owner: str | None, device: torch.device
) -> RunSetup:
    """Seed the random generators and build the run's fixed parts, in a fixed order (the
    model's initial weights depend on it).

    Raises:
        FieldError: for a spec that cannot run (see ``runtime.validation``).
    """
    tspec = spec.training
    random.seed(tspec.seed)
    torch.manual_seed(tspec.seed)
    data = build_datasets(spec, settings)
    steps_per_epoch = EpochBatchSampler.batches_per_epoch(
        len(data.train),  # type: ignore[arg-type]
        tspec.batch_size,
    )
    model = create_model(spec.model, pretrained=True)  # timm's weights if model.pretrained
    checkpoint = checkpoint_file(spec.model.checkpoint, settings=settings, owner=owner)
    if checkpoint is not None:
        report = load_checkpoint(model, checkpoint)
        log.info("loaded %d tensors from %s", len(report["loaded"]), checkpoint.name)
    model = model.to(device)
    cost_params = cost_model_params(spec.cost_model, spec.model.input_size, settings)
    cost_model = build_cost_model(spec.cost_model.name, cost_params)
    return RunSetup(
        data=data,
        steps_per_epoch=steps_per_epoch,
        total_steps=steps_per_epoch * tspec.epochs,
        model=model,
        maskable_weights=sum(t.numel for t in maskable_targets(model)),
        cost_params=cost_params,
        cost_model=cost_model,
        config=sparsifier_config(spec.sparsity, cost_model),
        criterion=nn.CrossEntropyLoss(label_smoothing=tspec.label_smoothing),
        scaler=torch.amp.GradScaler(
            device.type,
            enabled=tspec.mixed_precision == "auto" and needs_grad_scaler(device),
        ),
        val_loader=eval_loader(
            data.val,
            batch_size=tspec.batch_size,
            num_workers=spec.data.num_workers,
            pin_memory=device.type == "cuda",
        ),
        checkpoint_every=tspec.checkpoint_every_steps or settings.checkpoint_every_steps,
        amp=amp_context(tspec, device),
    )


def sparsifier_config(sparsity: SparsitySpec, cost_model: CostModel) -> SparsifierConfig:
    """The Sparsifier's configuration for the spec's ``sparsity`` section and cost model."""
    return SparsifierConfig(
        method=sparsity.method,
        target=sparsity.target,
        distribution=sparsity.distribution,
        block_shape=tuple(sparsity.block_shape),
        nm=None if sparsity.nm is None else tuple(sparsity.nm),
        beta_init=sparsity.beta_init,
        beta_max=sparsity.beta_max,
        **({} if sparsity.layer_floor is None else {"layer_floor": sparsity.layer_floor}),
        warmup_frac=sparsity.warmup_frac,
        finetune_frac=sparsity.finetune_frac,
        annealing=sparsity.annealing,
        include=tuple(sparsity.include),
        exclude=tuple(sparsity.exclude),
        cost_model=cost_model,
    )


def amp_context(tspec: TrainingSpec, device: torch.device) -> AmpFn:
    """A factory of the forward passes' autocast context (mixed precision ``auto`` or off)."""
    if tspec.mixed_precision == "off":
        return contextlib.nullcontext
    return lambda: autocast(device)

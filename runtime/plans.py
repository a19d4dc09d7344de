"""One-shot plans: how a target would be spread over a model's layers, without training.

``make_plan`` checks the request exactly as a job's target is checked (``runtime.validation``,
on the meta device), then builds the model with its initial weights (seeded, without touching
the caller's random state) or a checkpoint's, and returns ``cost_models.plan`` as a dict.
"""

from __future__ import annotations

from typing import Any

import torch

import cost_models
from runtime.costs import build_cost_model, cost_model_params
from runtime.models import create_model, load_checkpoint
from runtime.validation import check_model, check_target
from spartan.resolve import checkpoint_file
from spartan.settings import Settings
from spartan.spec import CostModelSpec, ModelSpec, TargetSpec
from spartan.store import JobStore

PLAN_TARGET_LOC = ()  # a plan request holds the target's fields at its top level
INIT_SEED = 0  # initial weights of a plan without a checkpoint: the same for every request


def make_plan(
    model_spec: ModelSpec,
    target: TargetSpec,
    cost_model_spec: CostModelSpec,
    *,
    settings: Settings,
    store: JobStore,
    owner: str,
) -> dict[str, Any]:
    """The plan of ``cost_models.plan`` for the model, target and cost model requested.

    Weights are the architecture's initialisation under seed ``INIT_SEED``, or the checkpoint
    (an upload id of ``owner``, or a .safetensors path under a data root).

    Raises:
        FieldError: naming the field of the request (``UnknownReference`` for an upload that
            is not the owner's).
    """
    checkpoint = checkpoint_file(model_spec.checkpoint, settings=settings, owner=owner, store=store)
    params = cost_model_params(cost_model_spec, model_spec.input_size, settings)
    check_target(
        check_model(model_spec),
        target,
        build_cost_model(cost_model_spec.name, params),
        where=PLAN_TARGET_LOC,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        model = create_model(model_spec)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    model.eval()
    result = cost_models.plan(
        model,
        build_cost_model(cost_model_spec.name, params),
        target.target,
        structure=target.block_shape,
        nm=target.nm,
        distribution=target.distribution,
        include=target.include,
        exclude=target.exclude,
        input_size=model_spec.input_size,
    )
    return result.to_dict()

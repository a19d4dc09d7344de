"""Bounds checked at submission: a job must fit this service's memory limit.

``estimate_memory(spec)`` is a rough, deliberately simple estimate of what one training step
needs, in bytes (float32 throughout):

- the input batch: ``batch_size * C * H * W * 4``;
- activations kept for the backward pass: ``batch_size`` times the elements every leaf module
  outputs for one sample, times 4, found by one forward pass on the meta device (nothing is
  allocated);
- weights and what travels with them: ``params * 4 * (weight + gradient + mask + optimizer
  state)``, the optimizer state being one buffer for SGD with momentum and two for AdamW;
- the data set's index: about 40 bytes per sample of the split lists (``synthetic``).

``check_memory(spec, settings)`` refuses a spec whose estimate is over
``settings.max_job_memory_bytes`` with a ``FieldError`` at the field behind the largest term
(``model.input_size`` for the input batch, ``training.batch_size`` for activations,
``model.num_classes`` or ``model.name`` for weights, ``data.num_samples`` for the index), its
message giving the estimate and its parts. Mixed precision, activation checkpointing or
in-place layers make the real figure smaller; the estimate errs on the large side.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from runtime.models import create_model
from spartan.errors import FieldError, Loc
from spartan.settings import Settings
from spartan.spec import JobSpec

log = logging.getLogger(__name__)

FLOAT_BYTES = 4
INDEX_BYTES_PER_SAMPLE = 40  # a Python int in a list: 8-byte pointer + 28-byte int, rounded
OPTIMIZER_BUFFERS = {"sgd": 1, "adamw": 2}  # per weight: momentum; exp_avg and exp_avg_sq


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one training step of a job needs, by part (see the module docstring)."""

    input_batch: int
    activations: int
    weights: int
    data_index: int
    head_weights: int = 0  # of ``weights``: the classifier layers sized by num_classes

    @property
    def total(self) -> int:
        return self.input_batch + self.activations + self.weights + self.data_index

    def largest(self) -> tuple[str, Loc]:
        """The largest part and the field of the spec behind it."""
        parts = {
            "input batch": (self.input_batch, ("model", "input_size")),
            "activations": (self.activations, ("training", "batch_size")),
            "weights": (
                self.weights,
                ("model", "num_classes")
                if self.head_weights * 2 > self.weights
                else ("model", "name"),
            ),
            "data index": (self.data_index, ("data", "num_samples")),
        }
        name = max(parts, key=lambda k: parts[k][0])
        return name, parts[name][1]

    def describe(self) -> str:
        return (
            f"input batch {gib(self.input_batch)}, activations {gib(self.activations)}, "
            f"weights with gradients, masks and optimizer state {gib(self.weights)}, "
            f"data index {gib(self.data_index)}"
        )


def gib(n: int) -> str:
    """Bytes as GiB (MiB below one GiB), for people."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def estimate_memory(spec: JobSpec) -> MemoryEstimate:
    """The memory estimate of one training step of ``spec`` (see the module docstring)."""
    batch = spec.training.batch_size
    sample = math.prod(spec.model.input_size)
    with torch.device("meta"):
        model = create_model(spec.model)
    params = sum(p.numel() for p in model.parameters())
    head = sum(
        m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
        for m in model.modules()
        if isinstance(m, nn.Linear) and m.out_features == spec.model.num_classes
    )
    per_weight = FLOAT_BYTES * (3 + OPTIMIZER_BUFFERS.get(spec.training.optimizer, 2))
    samples = spec.data.num_samples if spec.data.source == "synthetic" else 0
    return MemoryEstimate(
        input_batch=batch * sample * FLOAT_BYTES,
        activations=batch * _activation_elements(model, spec) * FLOAT_BYTES,
        weights=params * per_weight,
        data_index=samples * INDEX_BYTES_PER_SAMPLE,
        head_weights=head * per_weight,
    )


def check_memory(spec: JobSpec, settings: Settings) -> MemoryEstimate:
    """The estimate of ``spec``; raises ``FieldError`` if it is over the service's limit."""
    estimate = estimate_memory(spec)
    limit = settings.max_job_memory_bytes
    if estimate.total > limit:
        part, loc = estimate.largest()
        raise FieldError(
            loc,
            f"estimated training memory {gib(estimate.total)} is over this service's limit of "
            f"{gib(limit)} (SPARTAN_MAX_JOB_MEMORY_BYTES): {estimate.describe()}; largest: "
            f"{part}, lower {_fix(loc)}",
        )
    return estimate


def _fix(loc: Loc) -> str:
    if tuple(loc) == ("training", "batch_size"):
        return "training.batch_size or model.input_size"
    return ".".join(str(p) for p in loc)


def _activation_elements(model: nn.Module, spec: JobSpec) -> int:
    """Elements every leaf module outputs for one sample (meta device; 0 if it cannot run)."""
    total = 0

    def count(_module: nn.Module, _inputs: object, output: object) -> None:
        nonlocal total
        outputs = output if isinstance(output, tuple | list) else (output,)
        total += sum(t.numel() for t in outputs if isinstance(t, torch.Tensor))

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.device("meta"), torch.no_grad():
            model.eval()(torch.empty((1, *spec.model.input_size)))
    except (NotImplementedError, RuntimeError, ValueError, AssertionError) as exc:
        log.info("%s: activations not estimated (%s)", spec.model.name, exc)
        return 0
    finally:
        for hook in hooks:
            hook.remove()
    return total

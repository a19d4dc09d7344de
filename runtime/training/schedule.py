"""The optimizer and the per-step learning-rate schedule of a training run."""

from __future__ import annotations

import math

import torch
from torch import nn

from spartan.spec import TrainingSpec


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Learning-rate multiplier at ``step``.

    Linear warm-up (step + 1) / W for step < W, then 1 (``constant``) or
    (1 + cos(pi * (step - W) / (T - W))) / 2 (``cosine``, reaching 0 at T).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(total_steps - warmup_steps, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup_steps, span) / span))


def make_optimizer(
    model: nn.Module, tspec: TrainingSpec, *, steps_per_epoch: int, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """SGD (with momentum) or AdamW, weight decay on matrices only, and its LR schedule."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": tspec.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    optimizer: torch.optim.Optimizer
    if tspec.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=tspec.lr, momentum=tspec.momentum)
    else:
        optimizer = torch.optim.AdamW(groups, lr=tspec.lr)
    warmup = round(tspec.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        return lr_factor(
            step, total_steps=total_steps, warmup_steps=warmup, schedule=tspec.lr_schedule
        )

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

"""Validation: top-1 and top-5 accuracy and mean loss of a model on a loader."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

AmpFn = Callable[[], contextlib.AbstractContextManager[Any]]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Any,
    *,
    device: torch.device,
    num_classes: int,
    amp: AmpFn,
    poll: Callable[[], None] = lambda: None,
) -> dict[str, float]:
    """Top-1 and top-5 accuracy (fractions in [0, 1]) and mean loss on a validation loader.

    ``poll`` is called before every batch (it raises to stop the run).
    """
    was_training = model.training
    model.eval()
    k = min(5, num_classes)
    top1 = top5 = 0
    loss_sum = 0.0
    seen = 0
    criterion = nn.CrossEntropyLoss(reduction="sum")
    try:
        for images, labels in loader:
            poll()
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            with amp():
                logits = logits_of(model(images))
            logits = logits.float()
            loss_sum += float(criterion(logits, labels))
            best = logits.topk(k, dim=1).indices  # (B, k)
            hits = best == labels[:, None]
            top1 += int(hits[:, 0].sum())
            top5 += int(hits.any(dim=1).sum())
            seen += labels.shape[0]
    finally:
        model.train(was_training)
    if seen == 0:
        raise ValueError("data: the validation split is empty")
    return {"top1": top1 / seen, "top5": top5 / seen, "loss": loss_sum / seen}


def logits_of(output: Any) -> torch.Tensor:
    """The logits of a model's output (torchvision models may return (logits, aux) tuples)."""
    return output[0] if isinstance(output, tuple | list) else output

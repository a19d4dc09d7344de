"""What the masks look like now, for progress reports, the history and the final metrics."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch

from spartan_core import Sparsifier


def mask_stats(sparsifier: Sparsifier, maskable_weights: int) -> dict[str, Any]:
    """Weight sparsity over all maskable weights, kept cost fraction, scheduled f and beta."""
    summary = sparsifier.summary()
    return {
        "sparsity": (summary.masked_weights - summary.kept_weights) / maskable_weights,
        "cost_fraction": summary.kept_cost_fraction,
        "scheduled_cost_fraction": summary.cost_fraction,
        "beta": summary.beta,
    }


def masks_sha256(masks: Mapping[str, torch.Tensor]) -> str:
    """The SHA-256 (hex) of hard masks keyed by parameter name (``Sparsifier.masks()``).

    In name order, each mask adds its name (UTF-8), its shape (``str(tuple(shape))``) and its
    entries as one byte each (0 or 1, row-major), so the hash of ``masks.safetensors`` read
    back with ``safetensors.torch.load_file`` is the same as that of the run's final masks.
    """
    digest = hashlib.sha256()
    for name in sorted(masks):
        mask = masks[name].detach().to("cpu", torch.bool).contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(mask.shape)).encode())
        digest.update(mask.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()

"""What the masks look like now, for progress reports, the history and the final metrics."""

from __future__ import annotations

from typing import Any

from spartan_core import Sparsifier


def mask_stats(sparsifier: Sparsifier, maskable_weights: int) -> dict[str, Any]:
    """Weight sparsity over all maskable weights, kept cost fraction, scheduled f and beta."""
    kept = 0
    total = 0
    for layer in sparsifier.layers:
        r, c = layer.block_shape
        kept += int(layer.hard.sum()) * r * c
        total += layer.n_entries * r * c
    return {
        "sparsity": (total - kept) / maskable_weights,
        "cost_fraction": sparsifier.kept_cost_fraction(),
        "scheduled_cost_fraction": sparsifier.cost_fraction,
        "beta": sparsifier.beta,
    }

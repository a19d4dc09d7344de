"""What the masks look like now, for progress reports, the history and the final metrics."""

from __future__ import annotations

from typing import Any

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

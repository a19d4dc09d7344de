"""A job's metric series as people read it: training points and per-epoch records.

The worker appends every progress report and every epoch record to the store as the job runs
(``JobStore.add_metric``). ``metric_series`` turns those records into the two series
``GET /v1/jobs/{id}/metrics`` answers, the plots draw and MLflow receives:

- ``points``: the ``training`` progress reports (``step``, ``loss``, ``accuracy``, ``lr``,
  ``beta``, ``sparsity``, ``cost_fraction``, ``scheduled_cost_fraction``, ``throughput``, ...);
- ``epochs``: the per-epoch records (``epoch``, ``step``, ``val_top1``, ``val_top5``,
  ``val_loss``, ``train_loss``, ``train_accuracy``, ``lr``, ``sparsity``, ``cost_fraction``,
  ``beta``).

A job resumed from a checkpoint (preempted, or its worker lost) trains some steps again; the
later attempt's records replace the earlier ones from the step (or epoch) it resumed at, so
each series is increasing in step.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from spartan.store import JobMetric

TRAINING_PHASE = "training"


def metric_series(records: Iterable[JobMetric]) -> tuple[list[dict], list[dict]]:
    """(points, epochs) from a job's records, oldest first (see the module docstring)."""
    points: list[dict[str, Any]] = []
    epochs: list[dict[str, Any]] = []
    for record in records:
        if record.kind == "epoch":
            _append(epochs, record.data, key="epoch")
        elif record.data.get("phase") == TRAINING_PHASE:
            _append(points, record.data, key="step")
    return points, epochs


def _append(series: list[dict[str, Any]], item: dict[str, Any], *, key: str) -> None:
    """Append ``item``, first dropping the entries it repeats (``key`` >= its own)."""
    at = item.get(key)
    if isinstance(at, int | float):
        while series and isinstance(series[-1].get(key), int | float) and series[-1][key] >= at:
            series.pop()
    series.append(item)

"""What the dashboard's pages show, as plain data built from jobs and their artifacts.

Torch-free: everything here reads the store's ``Job`` snapshots and the JSON artifacts a
finished job wrote (``runtime.artifacts``: ``cost_report.json``, ``metrics.json``), so the
pages render without the job runtime. The page templates escape every string they are given;
the JavaScript formats the same fields itself (``static/dashboard.js``) when it refreshes them.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from api import services
from api.schemas import SweepPointPublic, SweepPublic, SweepSummaryPublic
from spartan.settings import Settings
from spartan.store import Job

log = logging.getLogger(__name__)

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
COST_REPORT = "cost_report.json"
PLOTS = ("curves.png", "layers.png")


def model_name(spec: dict[str, Any]) -> str:
    """``source/name`` of the job's model, e.g. ``torchvision/resnet18``."""
    model = spec.get("model") or {}
    return f"{model.get('source', '?')}/{model.get('name', '?')}"


def target_text(spec: dict[str, Any]) -> str:
    """The job's budget as people say it: ``90% sparse``, ``25% cost``, ``2:4``."""
    sp = spec.get("sparsity") or {}
    parts = []
    if sp.get("nm"):
        n, m = sp["nm"]
        parts.append(f"{n}:{m}")
    if sp.get("sparsity") is not None:
        parts.append(f"{sp['sparsity'] * 100:.4g}% sparse")
    elif sp.get("cost_fraction") is not None:
        cost = (spec.get("cost_model") or {}).get("name", "params")
        parts.append(f"{sp['cost_fraction'] * 100:.4g}% {cost}")
    block = sp.get("block_shape")
    if block and list(block) != [1, 1]:
        parts.append(f"{block[0]}x{block[1]} blocks")
    return ", ".join(parts) or "-"


def percent(value: Any) -> str:
    """A fraction in [0, 1] as ``12.3%``; ``-`` when unknown."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-"
    return f"{value * 100:.1f}%"


def job_summary(job: Job) -> dict[str, Any]:
    """One row of the jobs table: the final metrics of a finished job, else its progress."""
    final = (job.metrics or {}).get("final") or {}
    progress = job.progress or {}
    return {
        "id": job.id,
        "name": job.name or "",
        "status": job.status,
        "phase": progress.get("phase"),
        "model": model_name(job.spec),
        "target": target_text(job.spec),
        "accuracy": percent(final.get("top1", progress.get("accuracy"))),
        "sparsity": percent(final.get("sparsity", progress.get("sparsity"))),
        "cost_fraction": percent(final.get("cost_fraction", progress.get("cost_fraction"))),
        "created": job.created_at.strftime("%Y-%m-%d %H:%M:%S"),
    }


def progress_percent(job: Job) -> float:
    """How far the job's training is, in percent of its steps (100 once it has succeeded)."""
    if job.status == "succeeded":
        return 100.0
    progress = job.progress or {}
    step, total = progress.get("step"), progress.get("total_steps")
    if not isinstance(step, int | float) or not isinstance(total, int | float) or total <= 0:
        return 0.0
    return round(min(max(step / total, 0.0), 1.0) * 100, 1)


def read_json_artifact(settings: Settings, job_id: str, name: str) -> dict[str, Any] | None:
    """A JSON artifact of the job, or None when absent or unreadable (logged)."""
    if name not in {n for n, _ in services.list_artifacts(settings, job_id)}:
        return None
    path = services.artifact_path(settings, job_id, name)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("job %s: cannot read %s: %s", job_id, name, exc)
        return None
    return data if isinstance(data, dict) else None


def layer_series(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-layer density and cost (dense against kept) of a cost report, for the chart."""
    return [
        {
            "name": row.get("name"),
            "density": row.get("density"),
            "dense_cost": row.get("dense_cost"),
            "sparse_cost": row.get("sparse_cost"),
            "masked": row.get("masked"),
        }
        for row in report.get("layers") or []
    ]


def latency_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Predicted against measured latency (ms): the deployment's totals, then its layers.

    The prediction is the cost model's (null unless it prices time: ``latency_table``,
    ``profiled``); the measurement is the deployment on the worker's device.
    """
    deployment = report.get("deployment")
    if not isinstance(deployment, dict):
        return []
    rows = [
        {
            "name": "whole model",
            "kernel": ", ".join(f"{k} x{n}" for k, n in (deployment.get("kernels") or {}).items()),
            "dense_ms": deployment.get("dense_ms"),
            "measured_ms": deployment.get("deployed_ms"),
            "predicted_ms": deployment.get("predicted_ms"),
            "relative_error": deployment.get("relative_error"),
            "speedup": deployment.get("speedup"),
        }
    ]
    rows += [
        {
            "name": layer.get("module"),
            "kernel": layer.get("kernel"),
            "dense_ms": layer.get("dense_ms"),
            "measured_ms": layer.get("deployed_ms"),
            "predicted_ms": layer.get("predicted_ms"),
            "relative_error": layer.get("relative_error"),
            "speedup": layer.get("speedup"),
        }
        for layer in deployment.get("layers") or []
    ]
    return rows


def deployment_facts(report: dict[str, Any]) -> dict[str, Any] | None:
    """Where the deployment was measured: device, threads, dtype, batch size, input shape."""
    deployment = report.get("deployment")
    if not isinstance(deployment, dict):
        return None
    keys = ("device", "threads", "dtype", "batch_size", "input_shape")
    return {k: deployment.get(k) for k in keys}


# sweeps ---------------------------------------------------------------------------------------
def sweep_targets_text(axis: str, targets: list[float]) -> str:
    """A sweep's targets as people say them: ``cost fraction 0.5, 0.3, 0.1``."""
    name = "sparsity" if axis == "sparsity" else "cost fraction"
    return f"{name} " + ", ".join(f"{t:g}" for t in targets)


def sweep_row(sweep: SweepSummaryPublic) -> dict[str, Any]:
    """One row of the sweeps table."""
    total = sum(sweep.counts.values())
    return {
        "id": sweep.id,
        "name": sweep.name or "",
        "status": sweep.status,
        "targets": sweep_targets_text(sweep.axis, sweep.targets),
        "done": f"{sweep.counts.get('succeeded', 0)} / {total} succeeded",
        "created": sweep.created_at.strftime("%Y-%m-%d %H:%M:%S"),
    }


def point_row(point: SweepPointPublic) -> dict[str, Any]:
    """One row of a frontier table: the target, top-1, cost fraction and latency as text."""
    return {
        "job_id": point.job_id,
        "target": f"{point.target:g}",
        "top1": percent(point.top1),
        "cost_fraction": percent(point.cost_fraction),
        "latency_ms": "-" if point.latency_ms is None else f"{point.latency_ms:.3f}",
    }


def sweep_children(sweep: SweepPublic) -> list[dict[str, Any]]:
    """The rows of a sweep's children table: target, status, what it reached, on the frontier
    or not."""
    points = {p.job_id: p for p in sweep.points}
    on = {p.job_id for p in sweep.frontier}
    rows = []
    for job in sweep.jobs:
        point = points.get(job.id)
        rows.append(
            {
                "id": job.id,
                "target": f"{job.target:g}",
                "status": job.status,
                "error": job.error or "",
                "top1": percent(point.top1) if point else "-",
                "cost_fraction": percent(point.cost_fraction) if point else "-",
                "latency_ms": "-"
                if point is None or point.latency_ms is None
                else f"{point.latency_ms:.3f}",
                "frontier": job.id in on,
            }
        )
    return rows

"""Experiment tracking: a job's params, metric series and artifacts as an MLflow run.

At the end of a job (succeeded or failed) the worker logs to the tracking URI the job names
(``tracking.mlflow``) or the service's (``SPARTAN_MLFLOW_TRACKING_URI``), in the experiment
``tracking.experiment`` or ``SPARTAN_MLFLOW_EXPERIMENT``, one run per job (named after the job,
tagged ``spartan.job_id``):

- params: the job spec, flattened (``model.name``, ``sparsity.sparsity``, ...);
- metrics against the step: the training points (``loss``, ``accuracy``, ``lr``, ``beta``,
  ``sparsity``, ``cost_fraction``, ``scheduled_cost_fraction``, ``throughput``) and the
  epoch records (``val_top1``, ``val_top5``, ``val_loss``, ``epoch_train_loss``,
  ``epoch_train_accuracy``); the final ``dense_top1``/``top1``... as single values;
- artifacts: every file of the job's artifact folder (plots and log included).

The MLflow client is an optional dependency (``pip install 'spartan[mlflow]'``, the
``mlflow-skinny`` package): without it, or when the tracking server cannot be reached, the
job's log says so in one line and the job's outcome is unchanged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from spartan.settings import Settings
from spartan.spec import JobSpec

log = logging.getLogger(__name__)

MISSING = "mlflow is not installed: nothing logged to MLflow (pip install 'spartan[mlflow]')"
POINT_METRICS = (
    "loss",
    "accuracy",
    "lr",
    "beta",
    "sparsity",
    "cost_fraction",
    "scheduled_cost_fraction",
    "throughput",
)
# epoch record key -> MLflow metric name
EPOCH_METRICS = {
    "val_top1": "val_top1",
    "val_top5": "val_top5",
    "val_loss": "val_loss",
    "train_loss": "epoch_train_loss",
    "train_accuracy": "epoch_train_accuracy",
}
_BATCH = 1000  # metrics per log_batch call (MLflow's limit)
_PARAM_CHARS = 500


def tracking_uri(spec: JobSpec, settings: Settings) -> str | None:
    """The MLflow tracking URI of a job, or None when it is not tracked."""
    choice = spec.tracking.mlflow
    if choice is False:
        return None
    if isinstance(choice, str):
        return choice
    if choice is True and not settings.mlflow_tracking_uri:
        log.warning("tracking.mlflow is true but SPARTAN_MLFLOW_TRACKING_URI is not set")
    return settings.mlflow_tracking_uri or None


def log_run(
    uri: str,
    *,
    job_id: str,
    spec: JobSpec,
    settings: Settings,
    points: Sequence[Mapping[str, Any]],
    epochs: Sequence[Mapping[str, Any]],
    metrics: Mapping[str, Any] | None,
    artifact_dir: Path | None,
    succeeded: bool,
) -> str | None:
    """Log one finished job as an MLflow run; returns the run id (None: not logged)."""
    try:
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
    except ImportError:
        log.warning(MISSING)
        return None
    try:
        client = MlflowClient(tracking_uri=uri)
        experiment = spec.tracking.experiment or settings.mlflow_experiment
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(experiment)
        run = client.create_run(
            experiment_id,
            run_name=spec.name or job_id,
            tags={"spartan.job_id": job_id},
        )
        run_id = run.info.run_id
        now = int(time.time() * 1000)
        params = [Param(k, v) for k, v in flatten(spec.model_dump(mode="json")).items()]
        series = [Metric(k, v, now, step) for k, v, step in metric_points(points, epochs)]
        series += [Metric(k, v, now, 0) for k, v in final_metrics(metrics or {}).items()]
        for i in range(0, len(params), 100):
            client.log_batch(run_id, params=params[i : i + 100])
        for i in range(0, len(series), _BATCH):
            client.log_batch(run_id, metrics=series[i : i + _BATCH])
        client.log_batch(
            run_id, tags=[RunTag("spartan.status", "succeeded" if succeeded else "failed")]
        )
        if artifact_dir is not None and artifact_dir.is_dir():
            client.log_artifacts(run_id, str(artifact_dir))
        client.set_terminated(run_id, status="FINISHED" if succeeded else "FAILED")
    except (MlflowException, OSError) as exc:
        log.warning("MLflow at %s: the run was not logged: %s", uri, str(exc).splitlines()[0])
        return None
    log.info("logged to MLflow at %s: experiment %r, run %s", uri, experiment, run_id)
    return run_id


def flatten(body: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested mapping as ``{"a.b": "value"}`` (values as text, cut to 500 characters)."""
    out: dict[str, str] = {}
    for key, value in body.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)[:_PARAM_CHARS]
    return out


def metric_points(
    points: Sequence[Mapping[str, Any]], epochs: Sequence[Mapping[str, Any]]
) -> Iterator[tuple[str, float, int]]:
    """(metric name, value, step) for every number of the series."""
    for point in points:
        for key in POINT_METRICS:
            yield from _number(key, point.get(key), point.get("step"))
    for entry in epochs:
        for key, name in EPOCH_METRICS.items():
            yield from _number(name, entry.get(key), entry.get("step"))


def final_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of ``metrics.json``'s dense and final sections: ``dense_top1``,
    ``final_top1``, ``final_sparsity``, ..."""
    out: dict[str, float] = {}
    for section, prefix in (("dense", "dense_"), ("final", "final_")):
        for key, value in (metrics.get(section) or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[f"{prefix}{key}"] = float(value)
    return out


def _number(name: str, value: Any, step: Any) -> Iterator[tuple[str, float, int]]:
    if isinstance(value, int | float) and not isinstance(value, bool) and isinstance(step, int):
        yield name, float(value), step

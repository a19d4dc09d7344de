"""What a running job records for people to watch (``runtime.jobs``): its metric series in
the store and its log in ``log.txt``, both written as it runs."""

from __future__ import annotations

from typing import Any

import pytest

from runtime import jobs
from runtime.jobs import execute_job
from spartan.resolve import job_log_path
from spartan.series import metric_series
from spartan.settings import Settings
from spartan.store import get_store

from .conftest import tiny_spec


def test_the_series_and_the_log_are_written_as_the_job_runs(
    wsettings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = get_store(wsettings.database_url)
    spec = tiny_spec(training={"epochs": 2}).model_dump(mode="json")
    job, _ = store.create_job(owner="alice", spec=spec)
    seen: dict[str, Any] = {}
    original = jobs.JobMonitor.progress

    def progress(self: Any, p: dict[str, Any]) -> None:
        original(self, p)
        if p["phase"] == "training" and p["epoch"] > 1 and "during" not in seen:
            # the second epoch is training: what has been recorded so far?
            records = store.list_metrics(job_id=job.id)
            seen["during"] = metric_series(records)
            seen["log"] = job_log_path(wsettings, job.id).read_text()
            seen["status"] = store.get_job(job_id=job.id).status

    monkeypatch.setattr(jobs.JobMonitor, "progress", progress)
    assert execute_job(job.id, worker="n1/1", settings=wsettings) == "succeeded"

    points_then, epochs_then = seen["during"]
    assert seen["status"] == "running"
    assert [e["epoch"] for e in epochs_then] == [1]
    assert points_then and "epoch 1:" in seen["log"]

    points, epochs = metric_series(store.list_metrics(job_id=job.id))
    assert points[: len(points_then)] == points_then and len(points) > len(points_then)
    steps = [p["step"] for p in points]
    final = store.get_job(job_id=job.id)
    assert steps == sorted(set(steps)) and steps[-1] == final.metrics["steps"]
    for key in ("loss", "lr", "beta", "sparsity", "cost_fraction", "scheduled_cost_fraction"):
        assert all(isinstance(p[key], float) for p in points), key
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert epochs == final.metrics["history"]  # the stored records are the metrics' history
    log = job_log_path(wsettings, job.id).read_text()
    assert "INFO runtime.jobs: job " in log
    assert "epoch 2:" in log and "deployed on cpu" in log

    # the plots are drawn from the series into the artifact folder
    folder = job_log_path(wsettings, job.id).parent
    for name in ("curves.png", "layers.png"):
        data = (folder / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000, name

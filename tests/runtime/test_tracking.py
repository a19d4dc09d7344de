"""A job tracked in MLflow (``runtime.tracking``) against a local file store, read back with
MLflow's client; and what happens without matplotlib or the MLflow client."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from runtime.jobs import execute_job, publish
from spartan.series import metric_series
from spartan.settings import Settings, get_settings
from spartan.spec import JobSpec
from spartan.store import get_store

from .conftest import tiny_spec

mlflow = pytest.importorskip("mlflow")  # the dev install has it (extra "mlflow")


@pytest.fixture
def tracked(wsettings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings with MLflow tracking to a file store under ``tmp_path``."""
    monkeypatch.setenv("SPARTAN_MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("SPARTAN_MLFLOW_EXPERIMENT", "tests")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3.x: file stores on request
    get_settings.cache_clear()
    return get_settings()


def test_a_tracked_job_logs_params_series_and_artifacts(tracked: Settings) -> None:
    from mlflow.tracking import MlflowClient

    store = get_store(tracked.database_url)
    spec = tiny_spec(training={"epochs": 2}).model_dump(mode="json")
    spec["name"] = "tracked-run"
    job, _ = store.create_job(owner="alice", spec=spec)
    assert execute_job(job.id, worker="n1/1", settings=tracked) == "succeeded"
    points, epochs = metric_series(store.list_metrics(job_id=job.id))

    client = MlflowClient(tracking_uri=tracked.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name("tests")
    assert experiment is not None
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked-run"
    assert run.data.tags["spartan.job_id"] == job.id
    assert run.data.params["model.name"] == "test_resnet"
    assert run.data.params["sparsity.sparsity"] == "0.5"
    assert run.data.params["training.epochs"] == "2"

    def history(name: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, name))

    for key in ("loss", "lr", "beta", "sparsity", "cost_fraction"):
        assert history(key) == [(p["step"], pytest.approx(p[key])) for p in points], key
    assert history("val_top1") == [(e["step"], pytest.approx(e["val_top1"])) for e in epochs]
    assert len(history("val_top1")) == 2
    final = store.get_job(job_id=job.id).metrics["final"]
    assert run.data.metrics["final_top1"] == pytest.approx(final["top1"])

    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model.safetensors", "metrics.json", "curves.png", "layers.png", "log.txt"} <= names


def test_a_spec_can_opt_out_and_names_only_remote_servers(tracked: Settings) -> None:
    from runtime.tracking import tracking_uri

    spec = tiny_spec()
    assert tracking_uri(spec, tracked) == tracked.mlflow_tracking_uri
    assert tracking_uri(tiny_spec(tracking={"mlflow": False}), tracked) is None
    remote = tiny_spec(tracking={"mlflow": "https://mlflow.example:5000"})
    assert tracking_uri(remote, tracked) == "https://mlflow.example:5000"
    with pytest.raises(ValueError, match=r"tracking\.mlflow"):
        JobSpec.model_validate({**spec.model_dump(mode="json"), "tracking": {"mlflow": "file:/x"}})


def test_a_spec_names_only_the_tracking_servers_the_service_allows(
    tracked: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runtime.validation import validate_spec
    from spartan.errors import FieldError

    remote = tiny_spec(tracking={"mlflow": "https://mlflow.example:5000"})
    with pytest.raises(FieldError) as info:  # a job must not aim the worker at any host
        validate_spec(remote, tracked)
    assert info.value.loc == ("tracking", "mlflow")
    assert "SPARTAN_MLFLOW_ALLOWED_URIS" in str(info.value)

    monkeypatch.setenv("SPARTAN_MLFLOW_ALLOWED_URIS", "https://mlflow.example:5000/,http://b:1")
    get_settings.cache_clear()
    allowed = get_settings()
    assert allowed.mlflow_allowed_uris == ["https://mlflow.example:5000/", "http://b:1"]
    validate_spec(remote, allowed)
    validate_spec(tiny_spec(tracking={"mlflow": "https://mlflow.example:5000/api"}), allowed)
    for evil in ("https://mlflow.example:50000", "https://mlflow.example:5000.evil.com"):
        with pytest.raises(FieldError):
            validate_spec(tiny_spec(tracking={"mlflow": evil}), allowed)
    validate_spec(tiny_spec(tracking={"mlflow": True}), allowed)  # the service's own


def test_without_matplotlib_or_mlflow_the_job_still_publishes(
    tracked: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = get_store(tracked.database_url)
    job, _ = store.create_job(owner="alice", spec=tiny_spec().model_dump(mode="json"))
    point = {"phase": "training", "step": 1, "loss": 1.0, "lr": 0.1}
    store.add_metric(job_id=job.id, kind="progress", data=point)
    for name in ("matplotlib", "matplotlib.figure", "mlflow", "mlflow.tracking"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    with caplog.at_level(logging.WARNING):
        publish(job.id, tiny_spec(), store=store, settings=tracked, metrics={"final": {}})
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("matplotlib is not installed") for m in messages), messages
    assert any(m.startswith("mlflow is not installed") for m in messages), messages
    assert not (tracked.artifact_dir / job.id / "curves.png").exists()

"""The httpx client and the CLI commands built on it, against the in-process app."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from fastapi.testclient import TestClient
from safetensors.torch import save
from typer.testing import CliRunner

from cli import service as service_cli
from cli.main import app as cli_app
from spartan.client import SpartanAPIError, SpartanClient, format_detail, parse_sse
from spartan.settings import Settings
from spartan.store import get_store
from tests.api.conftest import tiny_spec


@pytest.fixture
def api(client: TestClient) -> SpartanClient:
    return SpartanClient(http=client)


def test_parse_sse_and_format_detail() -> None:
    lines = [": ping", "event: progress", "id: 1", 'data: {"a": 1}', "", 'data: "x"', ""]
    events = list(parse_sse(iter(lines)))
    assert [(e.event, e.id, e.data) for e in events] == [
        ("progress", "1", {"a": 1}),
        ("message", None, "x"),
    ]
    detail = [{"loc": ["body", "model", "name"], "msg": "unknown"}, {"loc": [], "msg": "bad"}]
    assert format_detail(detail) == "model.name: unknown\nbad"


def test_client_round_trip(api: SpartanClient, settings: Settings, tmp_path: Path) -> None:
    job = api.submit(tiny_spec(), idempotency_key="k")
    assert api.submit(tiny_spec(), idempotency_key="k")["id"] == job["id"]
    assert api.job(job["id"])["status"] == "queued"
    assert api.jobs(status="queued")["count"] == 1
    folder = settings.artifact_dir / job["id"]
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text('{"final": {"top1": 0.75}}')
    assert api.artifact_json(job["id"], "metrics.json") == {"final": {"top1": 0.75}}
    out = api.download(job["id"], "metrics.json", tmp_path)
    assert out == tmp_path / "metrics.json" and json.loads(out.read_text())["final"]["top1"] == 0.75
    assert api.cancel(job["id"])["status"] == "cancelled"
    events = list(api.events(job["id"]))
    assert events[-1].event == "end" and events[-1].data["status"] == "cancelled"
    ckpt = tmp_path / "w.safetensors"
    ckpt.write_bytes(save({"w": torch.ones(2)}))
    assert api.upload(ckpt)["num_tensors"] == 1
    assert api.models(source="torchvision", q="resnet18")["count"] >= 1
    assert api.cost_models()["count"] >= 4
    with pytest.raises(SpartanAPIError) as info:
        api.submit(tiny_spec(model={"source": "torchvision", "name": "resnet1000"}))
    assert info.value.status_code == 400 and "model.name" in str(info.value)
    with pytest.raises(SpartanAPIError) as info:
        api.job("job_nope")
    assert info.value.status_code == 404


def _fake_worker(settings: Settings, artifacts: dict[str, str]) -> threading.Thread:
    """Plays the worker for the first queued job: progress, artifacts, success."""
    store = get_store(settings.database_url)

    def run() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            jobs, _ = store.list_jobs(status="queued")
            if jobs:
                break
            time.sleep(0.05)
        job_id = jobs[0].id
        store.start_attempt(job_id=job_id, worker="fake")
        for step in (1, 2):
            store.update_progress(
                job_id=job_id, progress={"step": step, "total_steps": 2, "loss": 1.0 / step}
            )
            time.sleep(0.6)
        folder = settings.artifact_dir / job_id
        folder.mkdir(parents=True)
        for name, text in artifacts.items():
            (folder / name).write_text(text)
        store.finish(job_id=job_id, status="succeeded", metrics={"final": {"top1": 0.9}})

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_cli_commands(
    client: TestClient, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_cli, "_client", lambda: SpartanClient(http=client))
    runner = CliRunner()
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(tiny_spec()))

    thread = _fake_worker(
        settings,
        {
            "metrics.json": '{"dense": {"top1": 0.95}, "final": {"top1": 0.9}}',
            "cost_report.json": '{"totals": {"sparsity": 0.9, "cost_fraction": 0.1}}',
        },
    )
    result = runner.invoke(cli_app, ["submit", str(spec_file), "--wait"])
    thread.join()
    assert result.exit_code == 0, result.output
    assert "succeeded" in result.output and "90.00%" in result.output
    job_id = result.output.split()[0]
    assert job_id.startswith("job_")

    result = runner.invoke(cli_app, ["status", job_id])
    assert result.exit_code == 0 and '"succeeded"' in result.output
    result = runner.invoke(cli_app, ["jobs", "--status", "succeeded"])
    assert result.exit_code == 0 and job_id in result.output
    result = runner.invoke(cli_app, ["download", job_id, "--out", str(tmp_path / "dl")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "dl" / job_id / "cost_report.json").exists()

    second = runner.invoke(cli_app, ["submit", str(spec_file)])
    other_id = second.output.split()[0]
    result = runner.invoke(cli_app, ["cancel", other_id])
    assert result.exit_code == 0 and "cancelled" in result.output
    result = runner.invoke(cli_app, ["status", "job_nope"])
    assert result.exit_code == 2 and "404" in result.output

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(tiny_spec(sparsity={"sparsity": 2})))
    result = runner.invoke(cli_app, ["submit", str(bad)])
    assert result.exit_code == 2 and "sparsity.sparsity" in result.output


def test_cli_plan(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_cli, "_client", lambda: SpartanClient(http=client))
    result = CliRunner().invoke(
        cli_app,
        ["plan", "resnet18", "--sparsity", "0.9", "--input-size", "3,32,32", "--num-classes", "10"],
        env={"COLUMNS": "160"},
    )
    assert result.exit_code == 0, result.output
    assert "layer1.0.conv1" in result.output and "cost fraction" in result.output
    header = result.output.splitlines()[2]
    assert all(col in header for col in ("kept", "density", "dense", "sparse")), header
    assert "{" not in result.output  # no raw JSON without --json
    result = CliRunner().invoke(
        cli_app,
        ["plan", "resnet18", "--sparsity", "0.9", "--input-size", "3,32,32", "--num-classes",
         "10", "--exclude", "conv1", "--exclude", "fc", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)["plan"]["layers"]}
    assert not rows["conv1.weight"]["masked"] and rows["layer1.0.conv1.weight"]["masked"]
    # blocks that do not tile a layer: one line naming the fix, no traceback
    result = CliRunner().invoke(
        cli_app, ["plan", "resnet18", "--cost-fraction", "0.3", "--block", "4x4",
                  "--input-size", "3,32,32"],
    )  # fmt: skip
    assert result.exit_code == 2 and "--exclude" in result.output, result.output
    assert "Traceback" not in result.output

"""``spartan sweep`` and the other sweep commands against the in-process app, with a thread
playing the worker (the same against a live service: ``test_e2e_sweeps.py``)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from cli import service as service_cli
from cli.main import app as cli_app
from spartan.client import SpartanClient
from spartan.settings import Settings
from spartan.store import get_store
from tests.api.conftest import tiny_spec
from tests.api.test_sweeps import _succeed

# (top-1, cost fraction, latency ms) each child reaches, by its target
RESULTS = {0.5: (0.90, 0.5, 3.0), 0.3: (0.80, 0.3, 2.0), 0.2: (0.70, 0.35, 2.5)}


def _worker(settings: Settings, n: int, run: Callable[[str, float], None]) -> threading.Thread:
    """Plays the worker for the first ``n`` queued jobs (a sweep's children)."""
    store = get_store(settings.database_url)

    def play() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            jobs, _ = store.list_jobs(status="queued")
            if len(jobs) >= n:
                break
            time.sleep(0.05)
        for job in jobs:
            run(job.id, job.spec["sparsity"]["cost_fraction"])

    thread = threading.Thread(target=play, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def runner(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setattr(service_cli, "_client", lambda: SpartanClient(http=client))
    return CliRunner()


def test_sweep_wait_prints_the_frontier(
    runner: CliRunner, settings: Settings, tmp_path: Path
) -> None:
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(tiny_spec()))  # its own target is replaced
    thread = _worker(settings, 3, lambda job_id, t: _succeed(settings, job_id, *RESULTS[t]))
    plot = tmp_path / "frontier.png"
    args = [
        "sweep",
        str(spec_file),
        "--cost-fraction",
        "0.5,0.3,0.2",
        "--wait",
        "--plot",
        str(plot),
    ]
    result = runner.invoke(cli_app, args)
    thread.join()
    assert result.exit_code == 0, result.output
    assert "replaced by the sweep's targets" in result.output
    sweep_id = re.search(r"swp_\w+", result.output).group()  # type: ignore[union-attr]
    assert "Pareto frontier" in result.output and "succeeded" in result.output
    frontier = result.output[result.output.index("Pareto frontier") :]
    assert "90.00%" in frontier and "80.00%" in frontier and "70.00%" not in frontier
    assert "3.000" in frontier  # the deployed latency
    assert plot.read_bytes()[:4] == b"\x89PNG"

    result = runner.invoke(cli_app, ["sweep-status", sweep_id])
    assert result.exit_code == 0 and "Pareto frontier" in result.output
    result = runner.invoke(cli_app, ["sweep-status", sweep_id, "--json"])
    assert result.exit_code == 0 and '"frontier"' in result.output
    result = runner.invoke(cli_app, ["sweeps"])
    assert result.exit_code == 0 and sweep_id in result.output


def test_sweep_wait_exits_1_when_every_child_failed(
    runner: CliRunner, settings: Settings, tmp_path: Path
) -> None:
    store = get_store(settings.database_url)
    spec = tiny_spec()
    del spec["sparsity"]["sparsity"]
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(spec))

    def fail(job_id: str, _target: float) -> None:
        store.start_attempt(job_id=job_id, worker="fake")
        store.finish(job_id=job_id, status="failed", error="boom")

    thread = _worker(settings, 2, fail)
    result = runner.invoke(
        cli_app, ["sweep", str(spec_file), "--cost-fraction", "0.5,0.2", "--wait"]
    )
    thread.join()
    assert result.exit_code == 1, result.output
    assert "no frontier" in result.output and "failed" in result.output


def test_sweep_commands_refuse_bad_input(runner: CliRunner, tmp_path: Path) -> None:
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(tiny_spec()))
    result = runner.invoke(cli_app, ["sweep", str(spec_file)])
    assert (
        result.exit_code == 2 and "exactly one of --cost-fraction and --sparsity" in result.output
    )
    both = ["sweep", str(spec_file), "--sparsity", "0.5", "--cost-fraction", "0.5"]
    assert runner.invoke(cli_app, both).exit_code == 2
    result = runner.invoke(cli_app, ["sweep", str(spec_file), "--sparsity", "half"])
    assert result.exit_code == 2 and "comma-separated numbers" in result.output
    result = runner.invoke(cli_app, ["sweep", str(spec_file), "--sparsity", "0.5,0.5"])
    assert result.exit_code == 2 and "targets.sparsity.1" in result.output  # the service's 400
    result = runner.invoke(cli_app, ["sweep-status", "swp_nope"])
    assert result.exit_code == 2 and "404" in result.output and "spartan sweeps" in result.output


def test_sweep_cancel_command(runner: CliRunner, tmp_path: Path) -> None:
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(tiny_spec()))
    result = runner.invoke(cli_app, ["sweep", str(spec_file), "--sparsity", "0.5,0.9"])
    assert result.exit_code == 0, result.output
    sweep_id = re.search(r"swp_\w+", result.output).group()  # type: ignore[union-attr]
    result = runner.invoke(cli_app, ["sweep-cancel", sweep_id])
    assert result.exit_code == 0, result.output
    assert "cancelled" in result.output and "cancelled 2" in result.output

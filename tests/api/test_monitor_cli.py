"""``spartan logs JOB [--follow]`` and ``spartan follow JOB`` against the in-process app, with
a thread playing the worker (records, log lines, the outcome). The same commands run against a
real worker in ``test_e2e_monitor.py``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from cli import service as service_cli
from cli.main import app as cli_app
from spartan.client import SpartanClient
from spartan.resolve import job_log_path
from spartan.settings import Settings
from spartan.store import JobStore, get_store
from tests.api.conftest import tiny_spec


@pytest.fixture
def runner(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setattr(service_cli, "_client", lambda: SpartanClient(http=client))
    return CliRunner()


def _in_thread(work: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def _running_job(client: TestClient, store: JobStore) -> str:
    job_id = client.post("/v1/jobs", json=tiny_spec()).json()["id"]
    store.start_attempt(job_id=job_id, worker="fake")
    return job_id


def test_logs_prints_the_log_and_follow_prints_it_as_it_grows(
    runner: CliRunner, client: TestClient, settings: Settings
) -> None:
    store = get_store(settings.database_url)
    job_id = _running_job(client, store)
    log = job_log_path(settings, job_id)
    log.parent.mkdir(parents=True)
    log.write_text("first line\n")

    result = runner.invoke(cli_app, ["logs", job_id])
    assert result.exit_code == 0, result.output
    assert result.output == "first line\n"

    def work() -> None:
        for i in range(3):
            time.sleep(0.5)
            with log.open("a") as f:
                f.write(f"line {i}\n")
        store.finish(job_id=job_id, status="succeeded")

    thread = _in_thread(work)
    result = runner.invoke(cli_app, ["logs", job_id, "--follow"])
    thread.join()
    assert result.exit_code == 0, result.output
    assert result.output == "first line\nline 0\nline 1\nline 2\n"  # every line, once


def test_logs_of_an_unknown_job_is_one_line(runner: CliRunner) -> None:
    result = runner.invoke(cli_app, ["logs", "job_nope"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "error 404" in result.output


def test_follow_reattaches_the_progress_bar_until_the_end(
    runner: CliRunner, client: TestClient, settings: Settings
) -> None:
    store = get_store(settings.database_url)
    job_id = _running_job(client, store)

    def work() -> None:
        for step in (1, 2, 3):
            time.sleep(0.4)
            point = {"phase": "training", "step": step, "total_steps": 3, "loss": 0.5}
            store.update_progress(job_id=job_id, progress=point)
            store.add_metric(job_id=job_id, kind="progress", data=point)
        store.add_metric(job_id=job_id, kind="epoch", data={"epoch": 1, "val_top1": 0.5})
        time.sleep(0.4)
        folder = settings.artifact_dir / job_id
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "metrics.json").write_text('{"dense": {"top1": 0.6}, "final": {"top1": 0.5}}')
        store.finish(job_id=job_id, status="succeeded", metrics={"final": {"top1": 0.5}})

    thread = _in_thread(work)
    result = runner.invoke(cli_app, ["follow", job_id])
    thread.join()
    assert result.exit_code == 0, result.output
    assert "succeeded" in result.output and "3/3" in result.output
    assert "50.00%" in result.output  # the summary's top-1

    again = runner.invoke(cli_app, ["follow", job_id])  # a finished job: its end at once
    assert again.exit_code == 0 and "succeeded" in again.output


def test_follow_a_failed_job_exits_1_and_an_unknown_one_2(
    runner: CliRunner, client: TestClient, settings: Settings
) -> None:
    store = get_store(settings.database_url)
    job_id = _running_job(client, store)
    store.finish(job_id=job_id, status="failed", error="ValueError: boom", traceback="Tb")
    result = runner.invoke(cli_app, ["follow", job_id])
    assert result.exit_code == 1 and "failed" in result.output and "boom" in result.output
    result = runner.invoke(cli_app, ["follow", "job_nope"])
    assert result.exit_code == 2 and "error 404" in result.output

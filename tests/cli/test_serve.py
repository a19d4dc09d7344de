"""``spartan serve`` runs uvicorn without its per-request access log unless asked."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

import cli.serve
from cli.main import app as cli_app
from spartan.settings import Settings


@pytest.mark.parametrize(("flags", "access_log"), [([], False), (["--access-log"], True)])
def test_serve_logs_requests_only_when_asked(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, flags: list[str], access_log: bool
) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(cli.serve.uvicorn, "run", lambda *_a, **kw: calls.append(kw))
    monkeypatch.setattr(cli.serve.signal, "signal", lambda *_a: None)  # keep pytest's SIGTERM
    result = CliRunner().invoke(cli_app, ["serve", "--no-worker", "--port", "8999", *flags])
    assert result.exit_code == 0, result.output
    assert calls and calls[0]["access_log"] is access_log and calls[0]["port"] == 8999
    assert calls[0]["loop"] == "asyncio"  # uvloop left a long tail under load


def test_the_served_app_runs_with_the_collector_tuned(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc

    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(cli.serve.uvicorn, "run", lambda *a, **kw: calls.append(a))
    monkeypatch.setattr(cli.serve.signal, "signal", lambda *_a: None)
    result = CliRunner().invoke(cli_app, ["serve", "--no-worker", "--port", "8999"])
    assert result.exit_code == 0, result.output
    assert calls[0][0] == "cli.serve:serving_app"  # what uvicorn builds

    thresholds = gc.get_threshold()
    try:
        app = cli.serve.serving_app()
        assert gc.get_threshold()[0] == 100_000  # not every few polls
        assert gc.get_freeze_count() > 0  # start-up objects out of the scans
        assert "/v1/jobs/{job_id}" in app.openapi()["paths"]
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)

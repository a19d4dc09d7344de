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

"""Every CLI command answers an unreachable service, a bad setting or an error answer in one
line naming the fix, without a traceback; plus --version, list settings, apikey list/revoke and
download leaving nothing behind on a 404."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from api.main import create_app
from cli import service as service_cli
from cli.main import app as cli_app
from cli.serve import free_port
from spartan.client import SpartanClient
from spartan.keys import owner_for_key
from spartan.settings import Settings, get_settings
from spartan.store import get_store

ROOT = Path(__file__).resolve().parents[2]


def _spartan(*args: str, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``spartan ARGS`` in a fresh process (what a person runs), with only our SPARTAN_ vars."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SPARTAN_")}
    base.update({"SPARTAN_HOME": str(home), "COLUMNS": "200", **env})
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        env=base,
        cwd=ROOT,
        timeout=120,
    )


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_unreachable_service(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    line = _one_line(_spartan("jobs", home=tmp_path, SPARTAN_API_URL=url))
    assert url in line and "spartan serve" in line and "SPARTAN_API_URL" in line
    # a list setting given comma-separated is not the problem
    line = _one_line(
        _spartan("status", "job_x", home=tmp_path, SPARTAN_API_URL=url,
                 SPARTAN_DATA_ROOTS=f"{tmp_path},{tmp_path / 'other'}")
    )  # fmt: skip
    assert "cannot reach" in line


def test_bad_setting(tmp_path: Path) -> None:
    line = _one_line(_spartan("jobs", home=tmp_path, SPARTAN_MAX_UPLOAD_BYTES="lots"))
    assert line.startswith("bad setting SPARTAN_MAX_UPLOAD_BYTES='lots'") and "fix" in line
    line = _one_line(_spartan("apikey", "list", home=tmp_path, SPARTAN_DATABASE_URL="nope:/x"))
    assert "SPARTAN_DATABASE_URL" in line


def test_version(tmp_path: Path) -> None:
    result = _spartan("--version", home=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("spartan 0.")


def test_list_settings_take_json_or_commas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPARTAN_DATA_ROOTS", "/data, /other")
    assert Settings().data_roots == [Path("/data"), Path("/other")]
    monkeypatch.setenv("SPARTAN_DATA_ROOTS", '["/data", "/other"]')
    assert Settings().data_roots == [Path("/data"), Path("/other")]


@pytest.fixture
def api(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    with TestClient(create_app(settings)) as client:
        monkeypatch.setattr(service_cli, "_client", lambda: SpartanClient(http=client))
        yield client


def test_error_answers_in_one_line(api: TestClient, tmp_path: Path) -> None:
    runner = CliRunner()
    for args in (["status", "job_nope"], ["cancel", "job_nope"]):
        result = runner.invoke(cli_app, args)
        assert result.exit_code == 2, result.output
        [line] = result.output.strip().splitlines()
        assert line.startswith("error 404: path.job_id: job not found") and "spartan jobs" in line
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name: resnet1000}\nsparsity: {sparsity: 0.9}\n")
    result = runner.invoke(cli_app, ["submit", str(bad)])
    assert result.exit_code == 2 and "model.name" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_unauthorized_names_the_key_setting(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    with TestClient(create_app(settings.model_copy(update={"auth_enabled": True}))) as client:
        monkeypatch.setattr(service_cli, "_client", lambda: SpartanClient(http=client))
        result = CliRunner().invoke(cli_app, ["jobs"])
    assert result.exit_code == 2
    [line] = result.output.strip().splitlines()
    assert line.startswith("error 401") and "SPARTAN_API_KEY" in line


def test_download_of_an_unknown_job_makes_no_folder(api: TestClient, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    result = CliRunner().invoke(cli_app, ["download", "nope", "--out", str(out)])
    assert result.exit_code == 2 and "404" in result.output
    assert not out.exists()


def test_apikey_list_and_revoke(settings: Settings) -> None:
    runner = CliRunner()
    result = runner.invoke(cli_app, ["apikey", "create", "--owner", "carol"])
    assert result.exit_code == 0, result.output
    key = result.stdout.strip().splitlines()[0]
    store = get_store(get_settings().database_url)
    assert owner_for_key(store, key) == "carol"
    [info] = store.list_api_keys(owner="carol")
    result = runner.invoke(cli_app, ["apikey", "list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and info.id in result.output and "carol" in result.output
    assert key not in result.output
    result = runner.invoke(cli_app, ["apikey", "revoke", info.id])
    assert result.exit_code == 0 and "revoked" in result.output
    assert owner_for_key(store, key) is None
    result = runner.invoke(cli_app, ["apikey", "revoke", "key_nope"])
    assert result.exit_code == 2 and "apikey list" in result.output


def test_without_the_service_extra_the_command_says_what_to_install() -> None:
    code = "import sys; sys.modules['typer'] = None; import cli; cli.main()"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "pip install 'spartan[service]'" in result.stderr

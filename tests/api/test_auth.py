"""API keys and owner isolation: another owner's jobs, uploads and artifacts are 404."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save
from typer.testing import CliRunner

from api.main import create_app
from cli.main import app as cli_app
from spartan.keys import LOCAL_OWNER, create_api_key, hash_key
from spartan.settings import Settings
from spartan.store import get_store
from tests.api.conftest import tiny_spec


@pytest.fixture
def auth_client(settings: Settings) -> Iterator[TestClient]:
    settings.auth_enabled = True
    with TestClient(create_app(settings)) as client:
        yield client


def _as(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_keys_are_stored_hashed(settings: Settings) -> None:
    store = get_store(settings.database_url)
    key = create_api_key(store, owner="alice")
    assert key.startswith("spk_") and len(key) > 40
    assert store.owner_for_key_hash(key_hash=hash_key(key)) == "alice"
    with store.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT key_hash FROM api_keys").all()
    assert rows == [(hash_key(key),)] and key not in str(rows)
    with pytest.raises(ValueError, match="owner"):
        create_api_key(store, owner="bad owner/name")


def test_missing_or_unknown_key_is_401(auth_client: TestClient) -> None:
    r = auth_client.get("/v1/jobs")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["detail"][0]["loc"] == ["header", "authorization"]
    assert auth_client.get("/v1/jobs", headers=_as("spk_wrong")).status_code == 401
    assert auth_client.post("/v1/jobs", json=tiny_spec()).status_code == 401
    # health and metrics stay open
    assert auth_client.get("/healthz").status_code == 200


def test_auth_off_acts_as_the_local_owner(client: TestClient, settings: Settings) -> None:
    job_id = client.post("/v1/jobs", json=tiny_spec()).json()["id"]
    assert get_store(settings.database_url).get_job(job_id=job_id).owner == LOCAL_OWNER


def test_owner_isolation(auth_client: TestClient, settings: Settings) -> None:
    store = get_store(settings.database_url)
    alice, bob = create_api_key(store, owner="alice"), create_api_key(store, owner="bob")
    job_id = auth_client.post("/v1/jobs", json=tiny_spec(), headers=_as(alice)).json()["id"]
    folder = settings.artifact_dir / job_id
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text('{"final": {"top1": 0.5}}')

    assert auth_client.get(f"/v1/jobs/{job_id}", headers=_as(alice)).status_code == 200
    for method, path in [
        ("GET", f"/v1/jobs/{job_id}"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
        ("GET", f"/v1/jobs/{job_id}/events"),
        ("GET", f"/v1/jobs/{job_id}/artifacts"),
        ("GET", f"/v1/jobs/{job_id}/artifacts/metrics.json"),
    ]:
        r = auth_client.request(method, path, headers=_as(bob))
        assert r.status_code == 404, (method, path, r.status_code)
    assert auth_client.get("/v1/jobs", headers=_as(bob)).json()["count"] == 0
    assert auth_client.get("/v1/jobs", headers=_as(alice)).json()["count"] == 1
    assert store.get_job(job_id=job_id).status == "queued"  # bob's cancel did nothing
    r = auth_client.get(f"/v1/jobs/{job_id}/artifacts/metrics.json", headers=_as(alice))
    assert r.status_code == 200 and r.json() == {"final": {"top1": 0.5}}

    # the same idempotency key from two owners makes two jobs
    k = {"Idempotency-Key": "same"}
    a = auth_client.post("/v1/jobs", json=tiny_spec(), headers={**_as(alice), **k}).json()["id"]
    b = auth_client.post("/v1/jobs", json=tiny_spec(), headers={**_as(bob), **k}).json()["id"]
    assert a != b


def test_upload_isolation(auth_client: TestClient, settings: Settings) -> None:
    store = get_store(settings.database_url)
    alice, bob = create_api_key(store, owner="alice"), create_api_key(store, owner="bob")
    data = save({"w": torch.zeros(3)})
    upload = auth_client.post(
        "/v1/uploads", files={"file": ("w.safetensors", data)}, headers=_as(alice)
    ).json()
    assert auth_client.get(f"/v1/uploads/{upload['id']}", headers=_as(bob)).status_code == 404
    spec = tiny_spec(model={**tiny_spec()["model"], "checkpoint": upload["id"]})
    r = auth_client.post("/v1/jobs", json=spec, headers=_as(bob))
    assert r.status_code == 404
    assert r.json()["detail"][0]["loc"] == ["body", "model", "checkpoint"]


def test_apikey_create_command(settings: Settings) -> None:
    result = CliRunner().invoke(cli_app, ["apikey", "create", "--owner", "carol"])
    assert result.exit_code == 0, result.output
    key = result.stdout.strip().splitlines()[0]
    assert key.startswith("spk_")
    settings.auth_enabled = True
    with TestClient(create_app(settings)) as client:
        r = client.post("/v1/jobs", json=tiny_spec(), headers=_as(key))
        assert r.status_code == 201
    assert get_store(settings.database_url).get_job(job_id=r.json()["id"]).owner == "carol"
    bad = CliRunner().invoke(cli_app, ["apikey", "create", "--owner", "no spaces"])
    assert bad.exit_code != 0

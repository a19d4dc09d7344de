"""The API process answers health checks, lists and polls without importing torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from spartan.settings import Settings

REPO = Path(__file__).resolve().parents[2]

# Runs in a fresh interpreter: the modules of `spartan serve` (the CLI, then the app), a job
# stored as a submission would store it, then every torch-free route.
_SCRIPT = """
import sys
from fastapi.testclient import TestClient

import cli.main
from api.main import create_app
from spartan.store import get_store

app = create_app()
job, _ = get_store().create_job(owner="local", spec={"name": "j", "resources": {}})
with TestClient(app) as client:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    page = client.get("/v1/jobs").json()
    assert page["count"] == 1 and page["data"][0]["id"] == job.id, page
    assert client.get(f"/v1/jobs/{job.id}").json()["status"] == "queued"
    assert client.get(f"/v1/jobs/{job.id}/artifacts").json()["count"] == 0
    assert client.get("/metrics").status_code == 200
    assert client.post(f"/v1/jobs/{job.id}/cancel").json()["status"] == "cancelled"
    assert client.get("/openapi.json").status_code == 200
assert "torch" not in sys.modules, "torch was imported"
print("torch-free")
"""


def test_health_list_and_poll_without_torch(settings: Settings) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("torch-free")

"""End to end over HTTP: a live ``spartan serve`` (uvicorn + a real Celery worker process).

Distributed: Redis at 127.0.0.1:6379 as the broker and PostgreSQL at 127.0.0.1:5432 as the
store (``scripts/services.sh`` starts them and creates the ``spartan_test`` database).
Embedded: the defaults under a temporary SPARTAN_HOME (SQLite store, kombu's SQLAlchemy
transport). Each run uses its own queue so other workers on the same Redis never take its job.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import load_file

from cli.serve import free_port, stop_process, wait_ready
from spartan.client import SpartanClient

pytestmark = pytest.mark.slow

REDIS_URL = "redis://127.0.0.1:6379"
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/spartan_test"


def _reachable(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def live_service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Start ``spartan serve`` in a child process; yields (url, queue)."""
    queue = f"e2e-{secrets.token_hex(4)}"
    (tmp_path / "data").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARTAN_")}
    env.update(
        SPARTAN_HOME=str(tmp_path / "home"),
        SPARTAN_DATA_ROOTS=f'["{tmp_path / "data"}"]',
        SPARTAN_DEFAULT_QUEUE=queue,
        SPARTAN_PROGRESS_INTERVAL_S="0.2",
    )
    if request.param == "distributed":
        if not (_reachable(6379) and _reachable(5432)):
            pytest.fail("Redis/PostgreSQL not running: run scripts/services.sh first")
        env.update(
            SPARTAN_BROKER_URL=f"{REDIS_URL}/0",
            SPARTAN_DATABASE_URL=POSTGRES_URL,
        )
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc=proc, timeout=180)
        yield url, queue
    finally:
        stop_process(proc, timeout=60)
        log.close()
        if request.session.testsfailed:
            sys.stderr.write((tmp_path / "serve.log").read_text()[-5000:])


def _tiny_digits_job(queue: str) -> dict:
    return {
        "name": "e2e-digits",
        "model": {"source": "torchvision", "name": "resnet18", "input_size": [3, 16, 16]},
        "data": {"source": "digits"},
        "sparsity": {"method": "spartan", "sparsity": 0.9},
        "training": {"epochs": 1, "batch_size": 256, "lr": 0.05},
        "resources": {"queue": queue},
    }


@pytest.mark.parametrize("live_service", ["distributed", "embedded"], indirect=True)
def test_submit_follow_download_load(live_service: tuple[str, str], tmp_path: Path) -> None:
    url, queue = live_service
    with SpartanClient(url, timeout=30) as client:
        key = f"e2e-{queue}"  # the PostgreSQL store outlives test runs
        job = client.submit(_tiny_digits_job(queue), idempotency_key=key)
        again = client.submit(_tiny_digits_job(queue), idempotency_key=key)
        assert again["id"] == job["id"]
        events = list(client.events(job["id"]))
        assert events[-1].event == "end"
        final = events[-1].data
        assert final["status"] == "succeeded", final.get("error")
        progress = [e.data for e in events if e.event == "progress"]
        assert any(p["status"] == "running" and p["progress"] for p in progress)

        names = {a["name"] for a in client.artifacts(job["id"])["data"]}
        assert {"model.safetensors", "metrics.json", "cost_report.json"} <= names
        path = client.download(job["id"], "model.safetensors", tmp_path / "model.safetensors")
        report = client.artifact_json(job["id"], "cost_report.json")

    net = torchvision.models.resnet18(num_classes=10)
    net.load_state_dict(load_file(str(path)))  # strict: plain torchvision names and shapes
    weights = [m.weight for m in net.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    total = sum(w.numel() for w in weights)
    assert zeros / total == pytest.approx(0.9, abs=0.01)
    assert report["totals"]["sparsity"] == pytest.approx(0.9, abs=0.01)

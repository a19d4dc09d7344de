"""Sweeps end to end over HTTP: a live ``spartan serve`` with a real Celery worker process
(``tests/api/test_e2e.py``'s ``live_service``). Three tiny digits jobs from one
``spartan sweep --wait`` (a real process) end with a frontier of non-dominated points carrying
what each child reached and measured; a sweep cancelled right after creation cancels every
child."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from spartan.client import SpartanClient
from spartan.sweeps import Point, dominates
from tests.api.test_e2e import live_service  # noqa: F401  (the fixture)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
FINISHED = ("succeeded", "failed", "cancelled")


def _spec(queue: str, *, epochs: int = 1) -> dict:
    """A tiny digits job without a target: timm's test network (0.4 M weights) at 16x16."""
    return {
        "name": "e2e-sweep",
        "model": {"source": "timm", "name": "test_resnet", "input_size": [3, 16, 16]},
        "data": {"source": "digits"},
        "sparsity": {"method": "spartan"},
        "training": {"epochs": epochs, "batch_size": 256, "lr": 0.05},
        "resources": {"queue": queue},
    }


@pytest.mark.parametrize("live_service", ["embedded"], indirect=True)
def test_a_sweep_of_three_jobs_ends_with_its_frontier(
    live_service: tuple[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    url, queue = live_service
    spec_file = tmp_path / "sweep.yaml"
    spec_file.write_text(yaml.safe_dump(_spec(queue)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARTAN_")}
    env["SPARTAN_API_URL"] = url
    targets = ["--cost-fraction", "0.5,0.2,0.1", "--wait", "--plot", str(tmp_path / "f.png")]
    done = subprocess.run(
        [sys.executable, "-m", "cli", "sweep", str(spec_file), *targets],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Pareto frontier" in done.stdout
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    sweep_id = next(w for w in done.stdout.split() if w.startswith("swp_"))

    with SpartanClient(url, timeout=30) as client:
        sweep = client.sweep(sweep_id)
        assert sweep["status"] == "succeeded", sweep["jobs"]
        assert [j["target"] for j in sweep["jobs"]] == [0.5, 0.2, 0.1]
        jobs = client.jobs()["data"]  # ordinary jobs
        assert {j["id"] for j in sweep["jobs"]} <= {j["id"] for j in jobs}
        points = [Point(**p) for p in sweep["points"]]
        assert len(points) == 3
        for p in points:  # each child reached its target, and measured its deployment
            assert p.cost_fraction == pytest.approx(p.target, abs=0.02)
            assert 0.0 <= p.top1 <= 1.0
            assert p.latency_ms is not None and p.latency_ms > 0
            report = client.artifact_json(p.job_id, "cost_report.json")
            assert p.latency_ms == report["measured_latency"]["sparse_ms"]
        frontier = [Point(**p) for p in sweep["frontier"]]
        assert frontier
        for p in frontier:
            assert not any(dominates(q, p) for q in points)
        for p in points:
            if p not in frontier:
                assert any(dominates(q, p) for q in points)
        costs = [p.cost_fraction for p in frontier]
        assert costs == sorted(costs)
        assert client.sweep_plot(sweep_id)[:4] == b"\x89PNG"


@pytest.mark.parametrize("live_service", ["distributed"], indirect=True)
def test_cancelling_a_sweep_cancels_every_child(
    live_service: tuple[str, str],  # noqa: F811
) -> None:
    url, queue = live_service
    with SpartanClient(url, timeout=30) as client:
        created = client.submit_sweep(
            _spec(queue, epochs=20), cost_fraction=[0.5, 0.3, 0.1], idempotency_key=queue
        )
        answer = client.cancel_sweep(created["id"])
        assert [j["id"] for j in answer["jobs"]] == [j["id"] for j in created["jobs"]]
        deadline = time.monotonic() + 180  # a running child stops at its next step
        while time.monotonic() < deadline:
            sweep = client.sweep(created["id"])
            if all(j["status"] in FINISHED for j in sweep["jobs"]):
                break
            time.sleep(1)
        assert [j["status"] for j in sweep["jobs"]] == ["cancelled"] * 3, sweep["jobs"]
        assert sweep["status"] == "cancelled" and sweep["frontier"] == []
        for job in sweep["jobs"]:
            assert client.job(job["id"])["cancel_requested"] is True

"""Watching a job a real worker trains (``spartan serve`` with Redis and PostgreSQL): the
metric series grows as it runs, the event stream resumes after ``Last-Event-ID``, the log and
the plots are artifacts, ``spartan follow`` and ``spartan logs --follow`` (real CLI processes)
see the whole run, and a job that fails in the worker shows its traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from spartan.client import Event, SpartanClient
from tests.api.test_e2e import live_service

__all__ = ["live_service"]  # the fixture, shared with test_e2e

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _job(queue: str, **data: Any) -> dict[str, Any]:
    return {
        "name": "e2e-watch",
        "model": {"source": "torchvision", "name": "resnet18", "input_size": [3, 16, 16]},
        "data": {"source": "digits", **data},
        "sparsity": {"method": "spartan", "sparsity": 0.9},
        "training": {"epochs": 2, "batch_size": 128, "lr": 0.05},
        "resources": {"queue": queue},
    }


def _cli(url: str, *args: str) -> subprocess.Popen[str]:
    """``spartan ARGS`` as its own process, talking to the service at ``url``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARTAN_")}
    env.update(SPARTAN_API_URL=url, COLUMNS="200")
    return subprocess.Popen(
        [sys.executable, "-m", "cli", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait(what: str, check: Callable[[], bool], timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def _is_point(event: Event) -> bool:
    return event.event == "progress" and (event.data["progress"] or {}).get("phase") == "training"


@pytest.mark.parametrize("live_service", ["distributed"], indirect=True)
def test_watch_a_training_job_live(live_service: tuple[str, str], tmp_path: Path) -> None:
    url, queue = live_service
    with SpartanClient(url, timeout=30) as client:
        job_id = client.submit(_job(queue))["id"]
        follower = _cli(url, "follow", job_id)
        log_follower = _cli(url, "logs", job_id, "--follow")

        # first connection: until two training points, checking /metrics at each
        first: list[Event] = []
        sizes: list[int] = []
        seen_steps: set[int] = set()
        for event in client.events(job_id):
            first.append(event)
            # a status change can repeat the last point's step: count each step once
            if _is_point(event) and event.data["progress"]["step"] not in seen_steps:
                seen_steps.add(event.data["progress"]["step"])
                series = client.metrics(job_id)
                steps = [p["step"] for p in series["points"]]
                assert event.data["progress"]["step"] in steps  # stored as it runs
                assert series["last_id"] >= int(event.id)
                sizes.append(len(steps))
                if len(sizes) == 2:
                    break
            assert event.event != "end", "the job ended before two training points"
        # disconnected until the worker has stored more; then resume after the last event seen
        seen = int(first[-1].id)
        _wait(
            "a record written while disconnected", lambda: client.metrics(job_id)["last_id"] > seen
        )
        rest = list(client.events(job_id, last_event_id=first[-1].id))
        assert int(rest[0].id) > seen  # the missed records come first: a resume, not a restart
        assert rest[-1].event == "end"
        final = rest[-1].data
        assert final["status"] == "succeeded", final.get("error")

        series = client.metrics(job_id)
        points, epochs = series["points"], series["epochs"]
        # the series grew while it ran (the worker may store both first points before the
        # stream delivers the first, so the first two sizes can be equal under load)
        assert sizes[0] <= sizes[1] < len(points)
        ids = [int(e.id) for e in first + rest]
        assert ids == sorted(ids)
        # every stored point reached the client, in order (status events may repeat a step)
        streamed = [e.data["progress"]["step"] for e in first + rest if _is_point(e)]
        assert list(dict.fromkeys(streamed)) == [p["step"] for p in points]
        assert [e.data["epoch"]["epoch"] for e in first + rest if e.event == "epoch"] == [1, 2]
        assert [e["epoch"] for e in epochs] == [1, 2]
        assert all(0.0 <= e["val_top1"] <= 1.0 for e in epochs)
        assert points[-1]["step"] == final["metrics"]["steps"]
        for key in ("loss", "lr", "beta", "sparsity", "cost_fraction"):
            assert all(isinstance(p[key], float) for p in points), key

        names = {a["name"] for a in client.artifacts(job_id)["data"]}
        assert {"log.txt", "curves.png", "layers.png"} <= names
        log = client.logs(job_id)
        assert "epoch 2:" in log.text and "deployed on cpu" in log.text

    followed, _ = follower.communicate(timeout=300)
    assert follower.returncode == 0, followed
    total = final["metrics"]["steps"]
    assert "succeeded" in followed and f"{total}/{total}" in followed
    logged, _ = log_follower.communicate(timeout=300)
    assert log_follower.returncode == 0, logged
    assert logged == log.text  # every line of the log, once


@pytest.mark.parametrize("live_service", ["distributed"], indirect=True)
def test_a_job_failing_in_the_worker_shows_its_traceback(
    live_service: tuple[str, str], tmp_path: Path
) -> None:
    url, queue = live_service
    root = tmp_path / "data" / "broken"
    for split in ("train", "val"):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            (root / split / label / "0.png").write_bytes(b"not an image")  # passes validation
    with SpartanClient(url, timeout=30) as client:
        body = _job(queue, source="imagefolder", path=str(root))
        body["training"]["batch_size"] = 2  # the split holds 2 images
        job_id = client.submit(body)["id"]
        follower = _cli(url, "follow", job_id)
        followed, _ = follower.communicate(timeout=300)
        job = client.job(job_id)
        log = client.logs(job_id).text
    assert follower.returncode == 1, followed
    assert job["status"] == "failed" and job["error"].startswith("UnidentifiedImageError")
    assert job["traceback"].startswith("Traceback (most recent call last)")
    assert "UnidentifiedImageError" in job["traceback"].splitlines()[-1]
    assert "failed" in followed and "UnidentifiedImageError" in followed
    assert f"job {job_id} failed" in log and "UnidentifiedImageError" in log

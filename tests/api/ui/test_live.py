"""The job page under a real worker: a live ``spartan serve`` (uvicorn and a Celery worker).

The curves gain points while the job trains, and once it has ended the page draws the
per-layer chart from the cost report the worker wrote.
"""

from __future__ import annotations

from typing import Any

import pytest

from spartan.client import SpartanClient
from tests.api.test_e2e import live_service  # noqa: F401 (the fixture)

pytestmark = pytest.mark.slow

WAIT_MS = 600_000
POINTS = "Number(document.getElementById('point-count').dataset.points)"


@pytest.mark.parametrize("live_service", ["embedded"], indirect=True)
def test_job_page_curves_grow_while_a_worker_trains(
    live_service: tuple[str, str],  # noqa: F811
    page: Any,
) -> None:
    url, queue = live_service
    spec = {
        "name": "live-curves",
        "model": {"source": "torchvision", "name": "resnet18", "input_size": [3, 16, 16]},
        "data": {"source": "digits"},
        "sparsity": {"method": "spartan", "sparsity": 0.9},
        "training": {"epochs": 3, "batch_size": 64, "lr": 0.05},
        "resources": {"queue": queue},
    }
    with SpartanClient(url, timeout=30) as client:
        job_id = client.submit(spec)["id"]
    page.goto(f"{url}/ui/jobs/{job_id}")
    assert page.locator("#job-status").inner_text() in {"queued", "running"}

    page.wait_for_function(f"{POINTS} > 0", timeout=WAIT_MS)
    first = page.evaluate(POINTS)
    page.wait_for_function(f"{POINTS} > {first}", timeout=WAIT_MS)
    drawn = page.evaluate("window.spartanJob.curves.loss.chart.data.datasets[0].data.length")
    assert drawn > first
    steps = page.evaluate("window.spartanJob.state.points.map(p => p.step)")
    assert steps == sorted(set(steps))

    # the job ends; the page reloads itself and draws the worker's cost report
    page.wait_for_function("window.spartanJob && window.spartanJob.layerCharts", timeout=WAIT_MS)
    assert page.locator("#job-status").inner_text() == "succeeded"
    labels = page.evaluate("window.spartanJob.layerCharts.density.data.labels")
    assert "fc.weight" in labels and len(labels) == 21
    assert page.locator("#latency-table tbody tr").count() > 1
    page.wait_for_function(
        "window.spartanJob.curves.top1.chart.data.datasets[0].data.length === 3",
        timeout=WAIT_MS,
    )
    # the worker's log of the job, followed by the page
    page.wait_for_function(
        "document.getElementById('job-log').textContent.length > 0", timeout=WAIT_MS
    )
    assert page.errors == []

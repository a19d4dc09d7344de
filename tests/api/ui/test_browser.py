"""The dashboard in a real browser (headless Chromium): jobs, one job, the plan explorer, auth.

No worker runs here (jobs stay queued); finished jobs are written to the store with the
artifacts a worker would leave. The page with curves growing under a real worker is
``test_live.py``.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import torch
from fastapi import FastAPI
from torch import nn

import cost_models
from spartan.keys import create_api_key
from spartan.resolve import artifact_dir
from spartan.settings import Settings
from spartan.store import JobStore, get_store
from tests.api.conftest import tiny_spec

pytestmark = pytest.mark.slow  # a real browser process

XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=1</script>'
WAIT_MS = 60_000


def _submit(url: str, spec: dict[str, Any], key: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = httpx.post(f"{url}/v1/jobs", json=spec, headers=headers, timeout=60)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _finished_job(store: JobStore, settings: Settings, *, owner: str = "local") -> str:
    """A succeeded job with a real cost report (measured deployment) and epoch history."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    with torch.no_grad():
        for layer in (model[1], model[3]):
            layer.weight[layer.weight.abs() < layer.weight.abs().median()] = 0.0
    report = cost_models.cost_report(model, "params", input_size=(1, 8, 8), latency_repeats=1)
    spec = tiny_spec(name="finished-run")
    job, _ = store.create_job(owner=owner, spec=spec)
    folder = artifact_dir(settings, job.id)
    folder.mkdir(parents=True)
    (folder / "cost_report.json").write_text(report.to_json())
    history = [
        {"epoch": 1, "step": 10, "val_top1": 0.5, "train_loss": 1.2},
        {"epoch": 2, "step": 20, "val_top1": 0.7, "train_loss": 0.8},
    ]
    metrics = {"final": {"top1": 0.7, "sparsity": 0.5, "cost_fraction": 0.5}, "history": history}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    assert store.finish(job_id=job.id, status="succeeded", metrics=metrics)
    return job.id


def test_jobs_page_lists_jobs_live(ui_url: str, page: Any) -> None:
    first = _submit(ui_url, tiny_spec(name="first-job"))
    page.goto(f"{ui_url}/ui/")
    row = page.locator(f'tr[data-job-id="{first}"]')
    assert row.locator(".job-name").inner_text() == "first-job"
    assert row.locator(".badge").inner_text() == "queued"
    assert "torchvision/resnet18" in row.inner_text()
    assert "90% sparse" in row.inner_text()
    # submitted after the page was drawn: the live refresh adds it, newest first
    second = _submit(ui_url, tiny_spec(name="second-job"))
    page.locator(f'tr[data-job-id="{second}"]').wait_for(timeout=WAIT_MS)
    ids = page.locator("#jobs-body tr").evaluate_all("rows => rows.map(r => r.dataset.jobId)")
    assert ids == [second, first]
    # the status filter
    page.goto(f"{ui_url}/ui/?status=succeeded")
    assert page.locator("#jobs-body tr").count() == 0
    assert page.locator("#jobs-empty").is_visible()
    assert page.errors == []


def test_job_name_with_markup_is_shown_as_text(ui_url: str, page: Any) -> None:
    job_id = _submit(ui_url, tiny_spec(name=XSS))
    page.goto(f"{ui_url}/ui/")
    page.wait_for_function(
        "Number(document.getElementById('jobs-table').dataset.refreshed || 0) >= 1",
        timeout=WAIT_MS,
    )  # the rows are now the script's, not the server's
    assert page.locator(f'tr[data-job-id="{job_id}"] .job-name').inner_text() == XSS
    assert page.locator("#jobs-body img, #jobs-body script").count() == 0
    page.goto(f"{ui_url}/ui/jobs/{job_id}")
    assert page.locator("#job-name").inner_text() == XSS
    assert page.locator("main img, main script:not([type='application/json'])").count() == 0
    assert page.evaluate("window.__xss") is None
    assert page.errors == []


def test_unknown_job_is_a_404_page(ui_url: str, page: Any) -> None:
    response = page.goto(f"{ui_url}/ui/jobs/job_doesnotexist")
    assert response.status == 404
    assert "not found" in page.locator("#not-found h1").inner_text().lower()
    assert page.goto(f"{ui_url}/ui/no/such/page").status == 404
    assert page.goto(f"{ui_url}/").url == f"{ui_url}/ui/"


def test_finished_job_page_draws_layers_latency_and_history(
    ui_url: str, page: Any, app: FastAPI, settings: Settings
) -> None:
    job_id = _finished_job(app.state.store, settings)
    page.goto(f"{ui_url}/ui/jobs/{job_id}")
    page.wait_for_function("window.spartanJob && window.spartanJob.layerCharts", timeout=WAIT_MS)
    labels = page.evaluate("window.spartanJob.layerCharts.density.data.labels")
    assert labels == ["1.weight", "3.weight"]
    densities = page.evaluate("window.spartanJob.layerCharts.density.data.datasets[0].data")
    assert densities == pytest.approx([0.5, 0.5], abs=0.01)
    costs = page.evaluate(
        "window.spartanJob.layerCharts.cost.data.datasets.map(d => d.label + ':' + d.data.length)"
    )
    assert costs == ["dense cost (params):2", "kept cost (params):2"]
    box = page.locator("#chart-layers-density").bounding_box()
    assert box["width"] > 100 and box["height"] > 100
    # predicted against measured latency: the whole model and each deployed layer
    rows = page.locator("#latency-table tbody tr")
    assert rows.count() == 3
    assert rows.first.locator("td").first.inner_text() == "whole model"
    # validation top-1 per epoch from the final metrics, and the artifacts to download
    page.wait_for_function(
        "window.spartanJob.curves.top1.chart.data.datasets[0].data.length === 2", timeout=WAIT_MS
    )
    link = page.locator("#artifacts a", has_text="cost_report.json")
    assert link.get_attribute("href") == f"/ui/jobs/{job_id}/files/cost_report.json"
    assert page.locator("#job-status").inner_text() == "succeeded"
    assert page.locator("#cancel-button").count() == 0
    assert page.errors == []


def test_failed_job_page_shows_error_and_traceback(ui_url: str, page: Any, app: FastAPI) -> None:
    store: JobStore = app.state.store
    job, _ = store.create_job(owner="local", spec=tiny_spec(name="broken"))
    trace = 'Traceback (most recent call last):\n  File "x.py"\nValueError: <b>bad</b>'
    store.finish(
        job_id=job.id, status="failed", error="training.lr: <i>too high</i>", traceback=trace
    )
    page.goto(f"{ui_url}/ui/jobs/{job.id}")
    assert page.locator("#error-text").inner_text() == "training.lr: <i>too high</i>"
    assert page.locator("#traceback").inner_text() == trace
    assert page.locator("#job-error b, #job-error i").count() == 0


def test_cancel_button_cancels_a_queued_job(ui_url: str, page: Any) -> None:
    job_id = _submit(ui_url, tiny_spec(name="to-cancel"))
    page.goto(f"{ui_url}/ui/jobs/{job_id}")
    page.locator("#cancel-button").click()
    page.wait_for_function(
        "document.getElementById('job-status').textContent === 'cancelled'", timeout=WAIT_MS
    )
    assert httpx.get(f"{ui_url}/v1/jobs/{job_id}").json()["status"] == "cancelled"


def test_plan_explorer_shows_an_allocation(ui_url: str, page: Any) -> None:
    page.goto(f"{ui_url}/ui/plan")
    page.locator("#model-name").fill("resnet18")
    page.locator("#target-kind").select_option("sparsity")
    page.locator("#target-value").fill("0.8")
    page.locator("#structure").select_option("blocks")  # 4x4
    page.locator("#exclude").fill("conv1, fc")  # their shapes are no multiple of 4x4
    page.locator("#plan-submit").click()
    page.locator("#plan-body tr").first.wait_for(timeout=WAIT_MS)
    rows = page.locator("#plan-body tr")
    assert rows.count() == 21  # resnet18's convolutions, downsamples and fc
    assert rows.first.locator("td").first.inner_text() == "conv1.weight"
    assert rows.nth(1).locator("td").nth(1).inner_text() == "64×64×3×3"
    labels = page.evaluate("window.spartanPlan.chart.data.labels.length")
    assert labels == rows.count()
    assert "(target 20.0%, params)" in page.locator("#plan-summary").inner_text()
    # a bad request names the field
    page.locator("#model-name").fill("no_such_net")
    page.locator("#plan-submit").click()
    page.locator("#plan-error").wait_for(state="visible", timeout=WAIT_MS)
    assert "model.name" in page.locator("#plan-error").inner_text()
    assert page.errors == []


def test_with_auth_on_the_dashboard_shows_only_the_keys_owner(
    auth_url: str, page: Any, settings: Settings
) -> None:
    store = get_store(settings.database_url)
    alice = create_api_key(store, owner="alice")
    bob = create_api_key(store, owner="bob")
    alices = _submit(auth_url, tiny_spec(name="alice-job"), key=alice)

    response = page.goto(f"{auth_url}/ui/")
    assert response.status == 401
    assert page.locator("#jobs-table").count() == 0
    page.locator("#api-key").fill("spk_wrong")
    page.locator("#login-form button").click()
    page.locator("#login-error").wait_for(state="visible", timeout=WAIT_MS)
    page.locator("#api-key").fill(bob)
    page.locator("#login-form button").click()
    page.locator("#jobs-table").wait_for(timeout=WAIT_MS)
    assert "bob" in page.locator(".who").inner_text()
    assert page.locator("#jobs-body tr").count() == 0
    assert "alice-job" not in page.content()
    page.wait_for_function(
        "Number(document.getElementById('jobs-table').dataset.refreshed || 0) >= 1",
        timeout=WAIT_MS,
    )
    assert page.locator("#jobs-body tr").count() == 0
    # another owner's job is the same 404 page as an unknown one, and so are its files
    assert page.goto(f"{auth_url}/ui/jobs/{alices}").status == 404
    assert "alice-job" not in page.content()
    assert page.goto(f"{auth_url}/ui/jobs/{alices}/files/spec.json").status == 404

    page.locator("#sign-out").click()
    page.locator("#api-key").fill(alice)
    page.locator("#login-form button").click()
    page.locator(f'tr[data-job-id="{alices}"]').wait_for(timeout=WAIT_MS)
    assert page.goto(f"{auth_url}/ui/jobs/{alices}").status == 200
    assert page.locator("#job-name").inner_text() == "alice-job"
    assert page.errors == []

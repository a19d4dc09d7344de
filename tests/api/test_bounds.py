"""Bounds at submission: per-owner job quotas (429 with Retry-After) and the memory estimate
(400 naming the field and the estimate)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from runtime.bounds import check_memory, estimate_memory
from spartan.errors import FieldError
from spartan.settings import Settings
from spartan.spec import JobSpec
from spartan.store import get_store
from tests.api.conftest import tiny_spec


def _client(settings: Settings, **limits: int) -> TestClient:
    return TestClient(create_app(settings.model_copy(update=limits)))


def test_queued_quota_is_429_with_retry_after(settings: Settings) -> None:
    with _client(settings, max_queued_jobs_per_owner=2, quota_retry_after_s=7) as client:
        for key in ("a", "b"):
            r = client.post("/v1/jobs", json=tiny_spec(), headers={"Idempotency-Key": key})
            assert r.status_code == 201, r.text
        r = client.post("/v1/jobs", json=tiny_spec())
        assert r.status_code == 429 and r.headers["retry-after"] == "7"
        [item] = r.json()["detail"]
        assert item["type"] == "quota_exceeded" and "2 queued jobs" in item["msg"]
        assert "SPARTAN_MAX_QUEUED_JOBS_PER_OWNER" in item["msg"]
        # a retried submission is answered with its job, quota or not
        r = client.post("/v1/jobs", json=tiny_spec(), headers={"Idempotency-Key": "a"})
        assert r.status_code == 201 and r.headers["idempotent-replayed"] == "true"
        # a cancelled job frees its place
        job_id = client.get("/v1/jobs").json()["data"][0]["id"]
        assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
        assert client.post("/v1/jobs", json=tiny_spec()).status_code == 201


def test_running_quota(settings: Settings) -> None:
    with _client(settings, max_running_jobs_per_owner=1) as client:
        job_id = client.post("/v1/jobs", json=tiny_spec()).json()["id"]
        get_store(settings.database_url).start_attempt(job_id=job_id, worker="w")
        r = client.post("/v1/jobs", json=tiny_spec())
        assert r.status_code == 429 and "retry-after" in r.headers
        assert "1 running jobs" in r.json()["detail"][0]["msg"]


def test_quotas_off(settings: Settings) -> None:
    with _client(settings, max_queued_jobs_per_owner=0) as client:
        for _ in range(3):
            assert client.post("/v1/jobs", json=tiny_spec()).status_code == 201


def test_a_job_over_the_memory_limit_is_400_naming_the_field(settings: Settings) -> None:
    # the case: one input batch of about 17 GB
    huge = tiny_spec(
        model={"source": "torchvision", "name": "resnet18", "input_size": [4, 4096, 4096]},
        data={"source": "synthetic", "num_samples": 1024},
        training={"epochs": 1, "batch_size": 64},
    )
    with _client(settings) as client:
        r = client.post("/v1/jobs", json=huge)
        assert r.status_code == 400, r.text
        [item] = r.json()["detail"]
        assert item["loc"] == ["body", "training", "batch_size"]
        assert "estimated training memory" in item["msg"] and "GiB" in item["msg"]
        assert "input batch 16.0 GiB" in item["msg"]
        assert client.get("/v1/jobs").json()["count"] == 0


def test_the_field_is_the_largest_part(settings: Settings) -> None:
    spec = JobSpec.model_validate(
        tiny_spec(
            model={"source": "torchvision", "name": "resnet18", "num_classes": 100_000},
            data={"source": "synthetic", "num_samples": 1024},
        )
    )
    estimate = estimate_memory(spec)
    # resnet18's 512 x 100000 classifier is most of its weights
    assert estimate.largest() == ("weights", ("model", "num_classes"))
    assert estimate.total == (
        estimate.input_batch + estimate.activations + estimate.weights + estimate.data_index
    )
    small = settings.model_copy(update={"max_job_memory_bytes": estimate.total - 1})
    with pytest.raises(FieldError) as info:
        check_memory(spec, small)
    assert info.value.loc == ("model", "num_classes")
    assert check_memory(spec, settings).total == estimate.total


def test_estimate_parts() -> None:
    spec = JobSpec.model_validate(tiny_spec(training={"epochs": 1, "batch_size": 8}))
    estimate = estimate_memory(spec)
    assert estimate.input_batch == 8 * 3 * 16 * 16 * 4
    assert estimate.activations > estimate.input_batch  # every layer's output, per sample
    params = 11_181_642  # resnet18 with 10 classes
    assert estimate.weights == params * 4 * 4  # weight, gradient, mask, SGD momentum
    assert estimate.data_index == 0  # digits: a fixed 1,797 samples

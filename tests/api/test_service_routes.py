"""Artifacts, catalog (models, cost models), health, readiness and metrics."""

from __future__ import annotations

from fastapi.testclient import TestClient

from api.main import create_app
from spartan.settings import Settings
from spartan.store import get_store
from tests.api.conftest import tiny_spec


def test_artifacts_list_and_download(client: TestClient, settings: Settings) -> None:
    job_id = client.post("/v1/jobs", json=tiny_spec()).json()["id"]
    assert client.get(f"/v1/jobs/{job_id}/artifacts").json() == {"data": [], "count": 0}
    folder = settings.artifact_dir / job_id
    folder.mkdir(parents=True)
    payload = bytes(range(256)) * 4096  # 1 MiB, streamed back
    (folder / "model.safetensors").write_bytes(payload)
    (folder / "cost_report.json").write_text('{"totals": {"sparsity": 0.9}}')
    (folder / ".tmp-partial").write_text("not listed")
    listing = client.get(f"/v1/jobs/{job_id}/artifacts").json()
    assert listing["count"] == 2
    assert [a["name"] for a in listing["data"]] == ["cost_report.json", "model.safetensors"]
    assert listing["data"][1]["size"] == len(payload)
    assert listing["data"][1]["url"] == f"/v1/jobs/{job_id}/artifacts/model.safetensors"
    r = client.get(listing["data"][1]["url"])
    assert r.status_code == 200 and r.content == payload
    assert r.headers["content-type"] == "application/octet-stream"
    r = client.get(f"/v1/jobs/{job_id}/artifacts/cost_report.json")
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["totals"]["sparsity"] == 0.9
    assert client.get(f"/v1/jobs/{job_id}/artifacts/.tmp-partial").status_code == 400


def test_artifact_symlink_out_of_the_folder_is_not_served(
    client: TestClient, settings: Settings, tmp_path
) -> None:
    job_id = client.post("/v1/jobs", json=tiny_spec()).json()["id"]
    folder = settings.artifact_dir / job_id
    folder.mkdir(parents=True)
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    (folder / "link.txt").symlink_to(secret)
    assert client.get(f"/v1/jobs/{job_id}/artifacts/link.txt").status_code == 404
    assert client.get(f"/v1/jobs/{job_id}/artifacts").json()["count"] == 0


def test_models_reads_the_registry(client: TestClient) -> None:
    from runtime import models

    body = client.get("/v1/models").json()
    assert body["count"] == len(body["data"])
    names = {(m["source"], m["name"]) for m in body["data"]}
    assert ("torchvision", "resnet18") in names
    assert body["count"] == sum(len(models.list_architectures(s)) for s in models.sources())
    resnets = client.get("/v1/models", params={"source": "torchvision", "q": "RESNET"}).json()
    assert resnets["count"] > 0
    assert all(m["source"] == "torchvision" and "resnet" in m["name"] for m in resnets["data"])
    assert client.get("/v1/models", params={"source": "keras"}).status_code == 422


def test_cost_models_reads_the_registry(client: TestClient) -> None:
    import cost_models

    body = client.get("/v1/cost-models").json()
    assert [c["name"] for c in body["data"]] == cost_models.available()
    assert {"params", "flops", "memory", "latency_table"} <= {c["name"] for c in body["data"]}
    assert all("parameters" in c and "unit" in c for c in body["data"])


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ready", "checks": {"database": "ok", "broker": "ok"}}


def test_readiness_with_broker_down_is_503(settings: Settings) -> None:
    settings.broker_url = "redis://127.0.0.1:1/0"
    with TestClient(create_app(settings)) as client:
        r = client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["checks"]["database"] == "ok"
    assert r.json()["checks"]["broker"].startswith("error")


def test_metrics_in_prometheus_format(client: TestClient, settings: Settings) -> None:
    client.post("/v1/jobs", json=tiny_spec())
    job_id = client.post("/v1/jobs", json=tiny_spec()).json()["id"]
    client.post(f"/v1/jobs/{job_id}/cancel")
    client.get("/v1/jobs/job_nope")
    get_store(settings.database_url)  # same store the app counts from
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'spartan_jobs{status="queued"} 1.0' in text
    assert 'spartan_jobs{status="cancelled"} 1.0' in text
    assert 'spartan_http_requests_total{method="POST",route="/v1/jobs",status="201"} 2.0' in text
    assert 'route="/v1/jobs/{job_id}",status="404"' in text  # templates, not raw paths
    assert "spartan_http_request_duration_seconds_bucket" in text


def test_openapi_documents_every_route(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in [
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/cancel",
        "/v1/jobs/{job_id}/events",
        "/v1/jobs/{job_id}/artifacts",
        "/v1/jobs/{job_id}/artifacts/{name}",
        "/v1/uploads",
        "/v1/plans",
        "/v1/models",
        "/v1/cost-models",
        "/healthz",
        "/readyz",
        "/metrics",
    ]:
        assert path in paths, path
    assert client.get("/docs").status_code == 200

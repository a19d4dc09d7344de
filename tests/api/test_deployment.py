"""The deployment files: docker-compose.yml services, health checks, the GPU and CPU worker
profiles, the required database password."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKERS = ("worker", "worker-cpu")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_and_health_checks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"redis", "postgres", "api", *WORKERS} <= set(services)
    for name in ("redis", "postgres", "api", *WORKERS):
        check = services[name]["healthcheck"]
        assert check["test"] and check["interval"] and check["retries"] >= 1, name
    assert "readyz" in " ".join(services["api"]["healthcheck"]["test"])


def test_startup_order_waits_for_healthy_dependencies(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("api", *WORKERS):
        deps = services[name]["depends_on"]
        for dep in ("redis", "postgres"):
            assert deps[dep]["condition"] == "service_healthy", (name, dep)


def test_configuration_by_environment(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("api", *WORKERS):
        env = services[name]["environment"]
        assert env["SPARTAN_BROKER_URL"].startswith("redis://redis:")
        assert env["SPARTAN_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert "@postgres:5432/" in env["SPARTAN_DATABASE_URL"]
        assert env["SPARTAN_AUTH_ENABLED"] == "true"
    # the settings class understands every variable the compose file sets
    from spartan.settings import Settings

    fields = {f"SPARTAN_{name.upper()}" for name in Settings.model_fields}
    assert set(services["api"]["environment"]) <= fields


def test_worker_reserves_a_gpu(compose: dict[str, Any]) -> None:
    devices = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] and d.get("count", 0) >= 1 for d in devices)


def test_a_cpu_profile_runs_without_a_gpu(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["worker"]["profiles"] == ["gpu"]
    assert services["worker-cpu"]["profiles"] == ["cpu"]
    assert "resources" not in (services["worker-cpu"].get("deploy") or {})
    assert services["worker-cpu"]["command"] == services["worker"]["command"]
    # everything else starts in either profile
    assert all("profiles" not in services[name] for name in ("redis", "postgres", "api"))


def test_the_database_password_is_required(compose: dict[str, Any]) -> None:
    required = "${POSTGRES_PASSWORD:?"
    services = compose["services"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith(required)
    for name in ("api", *WORKERS):
        url = services[name]["environment"]["SPARTAN_DATABASE_URL"]
        assert f":{required}" in url and ":-" not in url, name


def test_api_and_worker_share_the_artifact_volume(compose: dict[str, Any]) -> None:
    services = compose["services"]

    def mounts(name: str) -> dict[str, str]:
        return dict(v.split(":")[:2][::-1] for v in services[name]["volumes"])

    home = services["api"]["environment"]["SPARTAN_HOME"]
    for worker in WORKERS:
        assert mounts("api")[home] == mounts(worker)[home] == "artifacts"
    assert "artifacts" in compose["volumes"]
    assert services["api"]["environment"]["SPARTAN_ARTIFACT_DIR"].startswith(home)


def test_dockerfile_installs_the_package(compose: dict[str, Any]) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "FROM python:3.11" in dockerfile
    assert "pip install" in dockerfile and "spartan" in dockerfile
    assert "[service," in dockerfile  # the service's dependencies are an extra
    assert "plots" in dockerfile and "mlflow" in dockerfile  # so are the worker's outputs
    assert compose["services"]["api"]["build"] == "."


def test_image_can_build_the_native_kernels() -> None:
    """The workers compile spartan_core's fused CPU kernels on first use: the image needs a
    C compiler and a writable cache for them."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert " gcc " in dockerfile and "libc6-dev" in dockerfile
    assert "SPARTAN_NATIVE_CACHE=/var/lib/spartan/" in dockerfile  # chowned to the user
    assert "chown -R spartan:spartan /var/lib/spartan" in dockerfile


def test_flower_is_behind_basic_auth_on_the_workers_broker(compose: dict[str, Any]) -> None:
    services = compose["services"]
    flower = services["flower"]
    env = flower["environment"]
    # required like POSTGRES_PASSWORD: no default, compose refuses to start without it
    assert env["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    assert ":-" not in env["FLOWER_BASIC_AUTH"]
    assert env["CELERY_BROKER_URL"] == services["worker"]["environment"]["SPARTAN_BROKER_URL"]
    assert "flower" in flower["command"] and flower["image"].startswith("mher/flower:")
    assert flower["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "/healthcheck" in " ".join(flower["healthcheck"]["test"])
    assert "profiles" not in flower
    # the workers send the task events Flower shows (``celery worker -E``)
    from spartan.queue import celery_config
    from spartan.settings import Settings

    config = celery_config(Settings(broker_url=env["CELERY_BROKER_URL"]))
    assert config["worker_send_task_events"] is True

"""The deployment files: docker-compose.yml services, health checks, GPU reservation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_and_health_checks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"redis", "postgres", "api", "worker"} <= set(services)
    for name in ("redis", "postgres", "api", "worker"):
        check = services[name]["healthcheck"]
        assert check["test"] and check["interval"] and check["retries"] >= 1, name
    assert "readyz" in " ".join(services["api"]["healthcheck"]["test"])


def test_startup_order_waits_for_healthy_dependencies(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("api", "worker"):
        deps = services[name]["depends_on"]
        for dep in ("redis", "postgres"):
            assert deps[dep]["condition"] == "service_healthy", (name, dep)


def test_configuration_by_environment(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("api", "worker"):
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


def test_api_and_worker_share_the_artifact_volume(compose: dict[str, Any]) -> None:
    services = compose["services"]

    def mounts(name: str) -> dict[str, str]:
        return dict(v.split(":")[:2][::-1] for v in services[name]["volumes"])

    api_target, worker_target = mounts("api"), mounts("worker")
    home = services["api"]["environment"]["SPARTAN_HOME"]
    assert api_target[home] == worker_target[home] == "artifacts"
    assert "artifacts" in compose["volumes"]
    assert services["api"]["environment"]["SPARTAN_ARTIFACT_DIR"].startswith(home)


def test_dockerfile_installs_the_package(compose: dict[str, Any]) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "FROM python:3.11" in dockerfile
    assert "pip install" in dockerfile and "spartan" in dockerfile
    assert compose["services"]["api"]["build"] == "."


def test_image_can_build_the_native_kernels() -> None:
    """The workers compile spartan_core's fused CPU kernels on first use: the image needs a
    C compiler and a writable cache for them."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert " gcc " in dockerfile and "libc6-dev" in dockerfile
    assert "SPARTAN_NATIVE_CACHE=/var/lib/spartan/" in dockerfile  # chowned to the user
    assert "chown -R spartan:spartan /var/lib/spartan" in dockerfile

"""Property-based fuzzing of every operation in /openapi.json: no 5xx, and every 4xx body has
the documented error shape. In-process ASGI; the broker is a SQLite file nobody consumes."""

from __future__ import annotations

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings

from api.main import create_app
from spartan.settings import Settings


@pytest.fixture
def fuzz_app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
def api_schema(fuzz_app: FastAPI):
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_no_server_errors(case) -> None:
    response = case.call()
    assert response.status_code < 500, (case.method, case.formatted_path, response.text[:500])
    if 400 <= response.status_code < 500:
        detail = response.json()["detail"]
        assert isinstance(detail, list) and detail
        assert all(isinstance(d["loc"], list) and d["msg"] for d in detail)

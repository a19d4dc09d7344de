"""Property-based fuzzing of every operation in /openapi.json: no 5xx, and every 4xx body has
the documented error shape. In-process ASGI; the broker is a SQLite file nobody consumes.

The app is built at import time (schemathesis reads the schema while collecting) on a fresh
temporary home, so it touches nothing outside it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings

from api.main import create_app
from spartan.settings import Settings

_HOME = Path(tempfile.mkdtemp(prefix="spartan-fuzz-"))
(_HOME / "data").mkdir()
app = create_app(Settings(home=_HOME / "home", data_roots=[_HOME / "data"]))
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


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

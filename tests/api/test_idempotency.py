"""Submission is atomic per idempotency key: concurrent first submissions against PostgreSQL
make one job, and every caller gets it back (never a 5xx).

PostgreSQL at 127.0.0.1:5432 (``scripts/services.sh``); each test gets a database of its own.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from spartan.settings import Settings
from spartan.store import get_store
from tests.api.conftest import broker_messages, tiny_spec

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
    name = f"spartan_idem_{secrets.token_hex(4)}"
    admin = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL not running ({exc}): run scripts/services.sh first")
    url = f"{POSTGRES}/{name}"
    yield url
    get_store(url).engine.dispose()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_concurrent_first_submissions_with_one_key_make_one_job(
    settings: Settings, postgres_url: str
) -> None:
    settings.database_url = postgres_url
    n = 20
    barrier = threading.Barrier(n)
    answers: list[tuple[int, dict]] = []
    lock = threading.Lock()
    with TestClient(create_app(settings)) as client:

        def submit() -> None:
            barrier.wait()
            r = client.post("/v1/jobs", json=tiny_spec(), headers={"Idempotency-Key": "k-1"})
            with lock:
                answers.append((r.status_code, r.json()))

        threads = [threading.Thread(target=submit) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert sorted(code for code, _ in answers) == [201] * n, answers
    assert len({body["id"] for _, body in answers}) == 1
    jobs, total = get_store(postgres_url).list_jobs(owner="local")
    assert total == 1 and jobs[0].id == answers[0][1]["id"]
    assert broker_messages(settings) == [{"task": "spartan.run_job", "args": [jobs[0].id]}]


def test_concurrent_inserts_with_one_key_in_the_store(postgres_url: str) -> None:
    """The race itself (check, then insert): without the unique constraint's answer about half
    of these raise IntegrityError on uq_owner_idempotency."""
    store = get_store(postgres_url)
    for key in ("a", "b", "c"):
        barrier = threading.Barrier(20)
        results: list[tuple[str, bool]] = []
        errors: list[BaseException] = []

        def create(
            key: str = key,
            barrier: threading.Barrier = barrier,
            results: list[tuple[str, bool]] = results,
            errors: list[BaseException] = errors,
        ) -> None:
            barrier.wait()
            try:
                job, created = store.create_job(owner="o", spec={"k": key}, idempotency_key=key)
                results.append((job.id, created))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=create) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert errors == []
        assert len({job_id for job_id, _ in results}) == 1
        assert sorted(created for _, created in results) == [False] * 19 + [True]

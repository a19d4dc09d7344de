"""``JobStore.job_columns``: the driver-level read behind polls gives what the ORM gives (JSON
columns as their stored text), on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import text

from spartan.store import JOB_JSON_COLUMNS, JobStore
from tests.spartan.test_migrations import empty_db  # noqa: F401  (the sqlite/postgresql fixture)

COLUMNS = ("owner", "id", "status", "spec", "progress", "metrics", "attempts", "cancel_requested")
TIMES = ("created_at", "updated_at", "started_at", "finished_at")


def test_job_columns_match_the_orm_snapshot(empty_db: str) -> None:  # noqa: F811
    store = JobStore(empty_db)
    job, _ = store.create_job(owner="alice", spec={"name": "j", "nested": {"k": [1, 2.5]}})
    store.start_attempt(job_id=job.id, worker="w/1")
    store.update_progress(job_id=job.id, progress={"step": 2})
    store.request_cancel(job_id=job.id)
    snapshot = store.get_job(job_id=job.id)
    assert snapshot is not None

    row = store.job_columns(job_id=job.id, columns=COLUMNS + TIMES)
    assert row is not None
    values = dict(zip(COLUMNS + TIMES, row, strict=True))
    for name in COLUMNS:
        got = values[name]
        if name in JOB_JSON_COLUMNS:
            assert got is None or isinstance(got, str), (name, got)
            got = json.loads(got) if got is not None else None
        assert got == getattr(snapshot, name), name
    assert values["cancel_requested"] is True and values["metrics"] in (None, "null")
    for name in TIMES:
        expected = getattr(snapshot, name)
        got = values[name]
        assert got is None if expected is None else isinstance(got, datetime), name
        if expected is not None:  # SQLite hands both back naive
            assert got.replace(tzinfo=None) == expected.replace(tzinfo=None), name

    assert store.job_columns(job_id="job_missing", columns=COLUMNS) is None


def test_job_columns_see_every_commit_at_once(empty_db: str) -> None:  # noqa: F811
    store = JobStore(empty_db)
    job, _ = store.create_job(owner="alice", spec={})
    read = ("status", "error")
    assert store.job_columns(job_id=job.id, columns=read) == ("queued", None)
    store.finish(job_id=job.id, status="failed", error="boom")  # through the ORM's connections
    assert store.job_columns(job_id=job.id, columns=read) == ("failed", "boom")
    with store.engine.connect() as conn:  # an uncommitted write is not seen, nor waited for
        conn.execute(text("UPDATE jobs SET error = 'draft' WHERE id = :id"), {"id": job.id})
        assert store.job_columns(job_id=job.id, columns=read) == ("failed", "boom")
        conn.rollback()

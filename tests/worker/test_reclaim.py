"""Reclaiming jobs whose worker died: re-queued once, sent again on their queue."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from spartan.settings import Settings
from spartan.store import get_store
from tests.runtime.test_jobs import RecordingBroker
from worker import reclaim

from .conftest import tiny_spec


def test_reclaim_requeues_silent_running_jobs(wsettings: Settings) -> None:
    store = get_store(wsettings.database_url)
    broker = RecordingBroker()
    body = tiny_spec(resources={"queue": "gpu"}).model_dump(mode="json")
    silent = store.create_job(owner="alice", spec=body)[0].id
    store.start_attempt(job_id=silent, worker="dead/1")
    now = datetime.now(UTC)

    def reclaim_at(when: datetime) -> list[str]:
        return reclaim.reclaim_lost_jobs(store=store, broker=broker, settings=wsettings, now=when)

    assert reclaim_at(now) == []
    later = now + timedelta(seconds=wsettings.heartbeat_timeout_s + 1)
    assert reclaim_at(later) == [silent]
    job = store.get_job(job_id=silent)
    assert job is not None and job.status == "queued" and job.worker is None
    assert job.spec["resources"]["queue"] == "gpu"
    assert broker.sent == [(silent, "gpu")]
    assert reclaim_at(later) == []

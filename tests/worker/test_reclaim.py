"""Reclaiming jobs whose worker died: re-queued once, sent again on their queue."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

from spartan.lease import holder_gone, holder_id
from spartan.queue import CeleryBroker, resend_lost, send_job
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


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_reclaim_follows_the_lease_not_the_progress(wsettings: Settings) -> None:
    store = get_store(wsettings.database_url)
    broker = RecordingBroker()
    job_id = store.create_job(owner="alice", spec=tiny_spec().model_dump(mode="json"))[0].id
    store.start_attempt(job_id=job_id, worker="n1/1", holder="elsewhere/7@x:1", lease_s=30)
    now = datetime.now(UTC)

    def reclaim_at(when: datetime) -> list[str]:
        return reclaim.reclaim_lost_jobs(store=store, broker=broker, settings=wsettings, now=when)

    assert reclaim_at(now + timedelta(seconds=29)) == []  # progress is old, the lease is not
    assert reclaim_at(now + timedelta(seconds=31)) == [job_id]
    job = store.get_job(job_id=job_id)
    assert job is not None and job.status == "queued" and job.lease_holder is None
    assert broker.resumed == [job_id]  # sent ahead of new jobs


def test_a_job_of_a_dead_local_process_is_reclaimed_at_once(wsettings: Settings) -> None:
    store = get_store(wsettings.database_url)
    broker = RecordingBroker()
    dead = store.create_job(owner="alice", spec=tiny_spec().model_dump(mode="json"))[0].id
    live = store.create_job(owner="alice", spec=tiny_spec().model_dump(mode="json"))[0].id
    store.start_attempt(job_id=dead, worker="n1/1", holder=holder_id(_dead_pid()), lease_s=600)
    store.start_attempt(job_id=live, worker="n2/1", holder=holder_id(), lease_s=600)
    assert reclaim.reclaim_lost_jobs(store=store, broker=broker, settings=wsettings) == [dead]
    assert not holder_gone(holder_id()) and holder_gone(holder_id(_dead_pid()))


def test_requeue_of_a_dead_claim_loses_to_a_new_claim(wsettings: Settings) -> None:
    store = get_store(wsettings.database_url)
    job_id = store.create_job(owner="alice", spec=tiny_spec().model_dump(mode="json"))[0].id
    old = store.start_attempt(job_id=job_id, worker="n1/1", holder="a", lease_s=1)
    assert old is not None
    assert store.start_attempt(job_id=job_id, worker="n2/1", holder="b", lease_s=30, expected=old)
    assert not store.requeue_dead(job=old)  # the snapshot's claim is gone: leave the new one
    job = store.get_job(job_id=job_id)
    assert job is not None and job.status == "running" and job.lease_holder == "b"


class LossyBroker(RecordingBroker):
    """A broker that can lose its messages (a restart without persistence, a FLUSHALL)."""

    def __init__(self) -> None:
        super().__init__()
        self.held: set[str] | None = set()

    def enqueue(self, job_id: str, *, queue: str, resume: bool = False) -> None:
        super().enqueue(job_id, queue=queue, resume=resume)
        if self.held is not None:
            self.held.add(job_id)

    def pending_jobs(self, queue: str) -> set[str] | None:
        return None if self.held is None else set(self.held)


def test_queued_jobs_the_broker_lost_are_sent_again_once(wsettings: Settings) -> None:
    wsettings.resend_after_s = 0.3
    store = get_store(wsettings.database_url)
    broker = LossyBroker()
    ids = [
        store.create_job(owner="alice", spec=tiny_spec().model_dump(mode="json"))[0].id
        for _ in range(3)
    ]
    for job_id in ids:
        send_job(store.get_job(job_id=job_id), store=store, broker=broker, settings=wsettings)

    def resend() -> list[str]:
        return sorted(resend_lost(store=store, broker=broker, settings=wsettings))

    assert resend() == []  # sent just now
    time.sleep(0.4)
    assert resend() == []  # all held by the broker: marked seen
    assert broker.held is not None
    broker.held.clear()  # the broker lost everything
    assert resend() == []  # seen a moment ago: not yet
    time.sleep(0.4)
    assert resend() == sorted(ids)
    assert resend() == []  # a second reconciler at the same moment sends nothing
    assert len(broker.sent) == 6 and broker.resumed == []
    broker.held = None  # a broker that cannot tell: re-sent by age
    time.sleep(0.4)
    assert resend() == sorted(ids)


def test_the_embedded_broker_tells_which_jobs_it_holds(settings: Settings) -> None:
    broker = CeleryBroker(settings)  # kombu's SQLAlchemy transport on a SQLite file
    assert broker.pending_jobs("q1") == set()
    broker.enqueue("job_a", queue="q1")
    broker.enqueue("job_b", queue="q1", resume=True)
    broker.enqueue("job_c", queue="q2")
    assert broker.pending_jobs("q1") == {"job_a", "job_b"}
    assert broker.pending_jobs("q2") == {"job_c"}

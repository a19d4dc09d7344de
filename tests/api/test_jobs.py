"""Jobs: submit (store, then enqueue), idempotency, listing, reading, cancel, events,
and re-enqueue of jobs whose broker message was lost."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from fastapi.testclient import TestClient

from api.main import create_app
from spartan.settings import Settings
from spartan.store import get_store
from tests.api.conftest import broker_messages, tiny_spec


class RecordingBroker:
    """A broker double for cancel tests: records enqueues and terminations."""

    def __init__(self) -> None:
        self.enqueued: list[tuple[str, str]] = []
        self.terminated: list[str] = []

    def enqueue(self, job_id: str, *, queue: str, resume: bool = False) -> None:
        self.enqueued.append((job_id, queue))

    def pending_jobs(self, queue: str) -> set[str] | None:
        """Every message sent stays in the broker (none is consumed)."""
        return {job_id for job_id, q in self.enqueued if q == queue}

    def ping(self) -> None:
        return None

    def terminate(self, job_id: str) -> bool:
        self.terminated.append(job_id)
        return True


def test_submit_stores_then_enqueues(client: TestClient, settings: Settings) -> None:
    r = client.post("/v1/jobs", json=tiny_spec())
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"id", "status"}
    assert body["status"] == "queued"
    assert r.headers["location"] == f"/v1/jobs/{body['id']}"
    job = get_store(settings.database_url).get_job(job_id=body["id"])
    assert job is not None and job.owner == "local" and job.spec["model"]["name"] == "resnet18"
    assert broker_messages(settings) == [{"task": "spartan.run_job", "args": [body["id"]]}]


def test_submit_goes_to_the_spec_queue(client: TestClient, settings: Settings) -> None:
    r = client.post("/v1/jobs", json=tiny_spec(resources={"queue": "gpu-a100"}))
    assert r.status_code == 201, r.text
    assert broker_messages(settings, "gpu-a100") == [
        {"task": "spartan.run_job", "args": [r.json()["id"]]}
    ]
    assert broker_messages(settings) == []


def test_idempotent_submit_returns_the_same_job(client: TestClient, settings: Settings) -> None:
    headers = {"Idempotency-Key": "retry-42"}
    first = client.post("/v1/jobs", json=tiny_spec(), headers=headers)
    second = client.post("/v1/jobs", json=tiny_spec(), headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] == second.json()["id"]
    assert second.headers["idempotent-replayed"] == "true"
    assert client.get("/v1/jobs").json()["count"] == 1
    assert len(broker_messages(settings)) == 1  # the retry sent no second message
    other = client.post("/v1/jobs", json=tiny_spec(), headers={"Idempotency-Key": "other"})
    assert other.json()["id"] != first.json()["id"]


def test_idempotency_key_reused_with_another_body_is_409(client: TestClient) -> None:
    headers = {"Idempotency-Key": "k1"}
    assert client.post("/v1/jobs", json=tiny_spec(), headers=headers).status_code == 201
    r = client.post("/v1/jobs", json=tiny_spec(name="different"), headers=headers)
    assert r.status_code == 409
    assert r.json()["detail"][0]["loc"] == ["header", "idempotency-key"]


def test_list_is_paginated_and_filtered(client: TestClient) -> None:
    ids = [client.post("/v1/jobs", json=tiny_spec()).json()["id"] for _ in range(3)]
    page = client.get("/v1/jobs", params={"limit": 2}).json()
    assert page["count"] == 3 and page["limit"] == 2 and len(page["data"]) == 2
    rest = client.get("/v1/jobs", params={"limit": 2, "offset": 2}).json()
    assert len(rest["data"]) == 1
    assert {j["id"] for j in page["data"] + rest["data"]} == set(ids)
    client.post(f"/v1/jobs/{ids[0]}/cancel")
    cancelled = client.get("/v1/jobs", params={"status": "cancelled"}).json()
    assert cancelled["count"] == 1 and cancelled["data"][0]["id"] == ids[0]
    assert client.get("/v1/jobs", params={"status": "queued"}).json()["count"] == 2
    assert client.get("/v1/jobs", params={"status": "bogus"}).status_code == 422
    assert client.get("/v1/jobs", params={"limit": 0}).status_code == 422


def test_get_job_and_unknown_job(client: TestClient) -> None:
    job_id = client.post("/v1/jobs", json=tiny_spec()).json()["id"]
    r = client.get(f"/v1/jobs/{job_id}")
    assert r.status_code == 200
    body = r.json()
    assert body["id"] == job_id and body["status"] == "queued" and body["error"] is None
    assert body["spec"]["sparsity"]["sparsity"] == 0.9
    assert "owner" not in body and body["traceback"] is None
    missing = client.get("/v1/jobs/job_doesnotexist")
    assert missing.status_code == 404
    assert missing.json()["detail"][0]["loc"] == ["path", "job_id"]


def test_cancel_queued_job_is_immediate(client: TestClient) -> None:
    job_id = client.post("/v1/jobs", json=tiny_spec()).json()["id"]
    r = client.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 200
    assert r.json()["status"] == "cancelled" and r.json()["cancel_requested"] is True
    # cancelling again is harmless
    assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    assert client.post("/v1/jobs/job_nope/cancel").status_code == 404


def test_cancel_running_job_terminates_after_grace(settings: Settings) -> None:
    settings.cancel_grace_s = 0.1
    broker = RecordingBroker()
    store = get_store(settings.database_url)
    with TestClient(create_app(settings, broker=broker)) as client:
        job_id = client.post("/v1/jobs", json=tiny_spec()).json()["id"]
        assert broker.enqueued == [(job_id, "default")]
        store.start_attempt(job_id=job_id, worker="w1")  # a worker picked it up
        r = client.post(f"/v1/jobs/{job_id}/cancel")
        assert r.json()["status"] == "running" and r.json()["cancel_requested"] is True
        deadline = time.monotonic() + 10
        job = client.get(f"/v1/jobs/{job_id}").json()
        while time.monotonic() < deadline and job["status"] != "cancelled":
            time.sleep(0.05)  # the grace timer terminates the task, then records the outcome
            job = client.get(f"/v1/jobs/{job_id}").json()
        assert broker.terminated == [job_id]
        assert job["status"] == "cancelled" and "terminated" in job["error"]


def test_cancel_running_job_that_stops_by_itself_is_not_killed(settings: Settings) -> None:
    settings.cancel_grace_s = 0.2
    broker = RecordingBroker()
    store = get_store(settings.database_url)
    with TestClient(create_app(settings, broker=broker)) as client:
        job_id = client.post("/v1/jobs", json=tiny_spec()).json()["id"]
        store.start_attempt(job_id=job_id, worker="w1")
        client.post(f"/v1/jobs/{job_id}/cancel")
        store.finish(job_id=job_id, status="cancelled")  # the worker saw the flag
        time.sleep(0.5)
        assert broker.terminated == []


def test_events_stream_progress_then_end(client: TestClient, settings: Settings) -> None:
    job_id = client.post("/v1/jobs", json=tiny_spec()).json()["id"]
    store = get_store(settings.database_url)
    store.start_attempt(job_id=job_id, worker="w1")

    def work() -> None:
        for step in (1, 2, 3):
            time.sleep(0.6)
            store.update_progress(job_id=job_id, progress={"step": step, "total_steps": 3})
        time.sleep(0.6)
        store.finish(job_id=job_id, status="succeeded", metrics={"top1": 0.9})

    thread = threading.Thread(target=work)
    thread.start()
    from spartan.client import parse_sse

    with client.stream("GET", f"/v1/jobs/{job_id}/events") as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = list(parse_sse(r.iter_lines()))
    thread.join()
    kinds = [e.event for e in events]
    assert kinds[-1] == "end" and kinds[:-1] == ["progress"] * (len(kinds) - 1)
    steps = [e.data["progress"]["step"] for e in events[:-1] if e.data["progress"]]
    assert steps == sorted(steps) and steps[-1] == 3
    assert events[0].data["status"] == "running"
    assert events[-1].data["status"] == "succeeded"
    assert events[-1].data["metrics"] == {"top1": 0.9}


def test_events_of_unknown_job_is_404(client: TestClient) -> None:
    assert client.get("/v1/jobs/job_nope/events").status_code == 404


def test_startup_reenqueues_a_job_whose_message_was_lost(settings: Settings) -> None:
    store = get_store(settings.database_url)
    # Stored but never enqueued: the API died between commit and send, or the broker lost it.
    lost, _ = store.create_job(owner="local", spec=tiny_spec())
    recent, _ = store.create_job(owner="local", spec=tiny_spec())
    store.mark_enqueued(job_id=recent.id)  # this one's message is (recently) in the broker
    done, _ = store.create_job(owner="local", spec=tiny_spec())
    store.request_cancel(job_id=done.id)
    assert broker_messages(settings) == []
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
    assert broker_messages(settings) == [{"task": "spartan.run_job", "args": [lost.id]}]
    # marked as enqueued now: a second start does not send it again
    with TestClient(create_app(settings)):
        pass
    assert broker_messages(settings) == []


class RecoveringBroker(RecordingBroker):
    """Unreachable for the first ``down`` enqueues, then working."""

    def __init__(self, down: int) -> None:
        super().__init__()
        self.down = down

    def enqueue(self, job_id: str, *, queue: str, resume: bool = False) -> None:
        if self.down > 0:
            self.down -= 1
            raise ConnectionError("broker unreachable")
        super().enqueue(job_id, queue=queue, resume=resume)


def test_a_job_submitted_while_the_broker_is_down_is_sent_when_it_is_back(
    settings: Settings,
) -> None:
    settings.resend_interval_s = 0.05
    broker = RecoveringBroker(down=2)  # the submission and the first re-send fail
    with TestClient(create_app(settings, broker=broker)) as client:
        r = client.post("/v1/jobs", json=tiny_spec())
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        deadline = time.monotonic() + 10
        while not broker.enqueued and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)  # several more sweeps: the job is not sent twice
    assert broker.enqueued == [(job_id, "default")]
    never = datetime.min.replace(tzinfo=UTC)
    assert get_store(settings.database_url).stale_queued(older_than=never) == []  # marked sent


def test_the_resend_loop_can_be_switched_off(settings: Settings) -> None:
    settings.resend_interval_s = 0
    broker = RecoveringBroker(down=1)
    with TestClient(create_app(settings, broker=broker)) as client:
        assert client.post("/v1/jobs", json=tiny_spec()).status_code == 201
        time.sleep(0.2)
    assert broker.enqueued == []


def test_submit_with_broker_down_keeps_the_job_for_reenqueue(
    settings: Settings, monkeypatch
) -> None:
    settings.broker_url = "redis://127.0.0.1:1/0"  # nothing listens there
    with TestClient(create_app(settings)) as client:
        r = client.post("/v1/jobs", json=tiny_spec())
        assert r.status_code == 201
        job_id = r.json()["id"]
        assert client.get("/readyz").status_code == 503
    store = get_store(settings.database_url)
    stale = store.stale_queued(older_than=store.get_job(job_id=job_id).created_at)
    assert [j.id for j in stale] == [job_id]

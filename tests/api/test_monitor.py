"""A job's metric series, log and traceback over REST (``api.routes.monitor``, ``JobPublic``):
the series grows with the records the worker appends, other owners and unknown jobs are 404."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from spartan.keys import create_api_key
from spartan.resolve import job_log_path
from spartan.settings import Settings
from spartan.store import get_store
from tests.api.conftest import tiny_spec


def _as(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def auth_client(settings: Settings) -> Iterator[TestClient]:
    settings.auth_enabled = True
    with TestClient(create_app(settings)) as client:
        yield client


def _point(step: int, **extra: float) -> dict:
    return {"phase": "training", "step": step, "total_steps": 10, "loss": 2.0 / step, **extra}


def test_metrics_grow_with_the_records_of_the_running_job(
    client: TestClient, settings: Settings
) -> None:
    job_id = client.post("/v1/jobs", json=tiny_spec()).json()["id"]
    store = get_store(settings.database_url)
    empty = client.get(f"/v1/jobs/{job_id}/metrics")
    assert empty.status_code == 200
    assert empty.json() == {"job_id": job_id, "points": [], "epochs": [], "last_id": 0}

    store.start_attempt(job_id=job_id, worker="w1")
    store.add_metric(job_id=job_id, kind="progress", data={"phase": "evaluating_dense", "step": 0})
    store.add_metric(job_id=job_id, kind="progress", data=_point(1, lr=0.1, beta=1.0))
    first = client.get(f"/v1/jobs/{job_id}/metrics").json()
    assert [p["step"] for p in first["points"]] == [1]  # phase changes are not points
    assert first["points"][0]["lr"] == 0.1 and first["points"][0]["beta"] == 1.0

    store.add_metric(job_id=job_id, kind="progress", data=_point(5))
    epoch = {"epoch": 1, "step": 5, "val_top1": 0.5, "train_loss": 1.0, "sparsity": 0.9}
    store.add_metric(job_id=job_id, kind="epoch", data=epoch)
    second = client.get(f"/v1/jobs/{job_id}/metrics").json()
    assert [p["step"] for p in second["points"]] == [1, 5]
    assert second["epochs"] == [epoch]
    assert second["last_id"] > first["last_id"]


def test_metrics_of_a_resumed_job_keep_the_later_attempt(
    client: TestClient, settings: Settings
) -> None:
    job_id = client.post("/v1/jobs", json=tiny_spec()).json()["id"]
    store = get_store(settings.database_url)
    for step in (2, 4, 6):  # attempt 1, preempted after step 6; its checkpoint is at step 4
        store.add_metric(job_id=job_id, kind="progress", data=_point(step), attempt=1)
    for step in (5, 7):
        store.add_metric(job_id=job_id, kind="progress", data=_point(step, lr=0.5), attempt=2)
    points = client.get(f"/v1/jobs/{job_id}/metrics").json()["points"]
    assert [p["step"] for p in points] == [2, 4, 5, 7]
    assert [p.get("lr") for p in points] == [None, None, 0.5, 0.5]


def test_metrics_logs_and_traceback_are_the_owners_only(
    auth_client: TestClient, settings: Settings
) -> None:
    store = get_store(settings.database_url)
    alice, bob = create_api_key(store, owner="alice"), create_api_key(store, owner="bob")
    job_id = auth_client.post("/v1/jobs", json=tiny_spec(), headers=_as(alice)).json()["id"]
    store.add_metric(job_id=job_id, kind="progress", data=_point(1))
    job_log_path(settings, job_id).parent.mkdir(parents=True)
    job_log_path(settings, job_id).write_text("alice's secret line\n")
    for path in ("metrics", "logs"):
        mine = auth_client.get(f"/v1/jobs/{job_id}/{path}", headers=_as(alice))
        assert mine.status_code == 200
        theirs = auth_client.get(f"/v1/jobs/{job_id}/{path}", headers=_as(bob))
        assert theirs.status_code == 404 and "secret" not in theirs.text
        assert theirs.json()["detail"][0]["loc"] == ["path", "job_id"]
        assert auth_client.get(f"/v1/jobs/{job_id}/{path}").status_code == 401


@pytest.mark.parametrize("path", ["metrics", "logs"])
def test_metrics_and_logs_of_an_unknown_job_are_404(client: TestClient, path: str) -> None:
    r = client.get(f"/v1/jobs/job_nope/{path}")
    assert r.status_code == 404
    assert r.json()["detail"][0]["loc"] == ["path", "job_id"]


def test_logs_are_read_from_an_offset(client: TestClient, settings: Settings) -> None:
    job_id = client.post("/v1/jobs", json=tiny_spec()).json()["id"]
    r = client.get(f"/v1/jobs/{job_id}/logs")
    assert r.status_code == 200 and r.text == "" and r.headers["x-log-offset"] == "0"
    assert r.headers["content-type"].startswith("text/plain")

    log = job_log_path(settings, job_id)
    log.parent.mkdir(parents=True)
    log.write_text("line one\nline two\n")
    r = client.get(f"/v1/jobs/{job_id}/logs")
    assert r.text == "line one\nline two\n"
    offset = int(r.headers["x-log-offset"])
    assert offset == len(b"line one\nline two\n")
    assert client.get(f"/v1/jobs/{job_id}/logs", params={"offset": offset}).text == ""
    with log.open("a") as f:
        f.write("line three\n")
    r = client.get(f"/v1/jobs/{job_id}/logs", params={"offset": offset})
    assert r.text == "line three\n" and r.headers["x-job-status"] == "queued"
    # a limit ends the answer at a whole line; the offset continues from there
    r = client.get(f"/v1/jobs/{job_id}/logs", params={"limit": 12})
    assert r.text == "line one\n" and r.headers["x-log-offset"] == "9"
    # the log is an artifact too
    names = {a["name"] for a in client.get(f"/v1/jobs/{job_id}/artifacts").json()["data"]}
    assert "log.txt" in names
    assert client.get(f"/v1/jobs/{job_id}/logs", params={"offset": -1}).status_code == 422


def test_a_failed_jobs_traceback_is_in_the_job(client: TestClient, settings: Settings) -> None:
    job_id = client.post("/v1/jobs", json=tiny_spec()).json()["id"]
    assert client.get(f"/v1/jobs/{job_id}").json()["traceback"] is None
    store = get_store(settings.database_url)
    store.start_attempt(job_id=job_id, worker="w1")
    trace = 'Traceback (most recent call last):\n  File "x.py", line 1\nValueError: boom\n'
    store.finish(job_id=job_id, status="failed", error="ValueError: boom", traceback=trace)
    body = client.get(f"/v1/jobs/{job_id}").json()
    assert body["status"] == "failed" and body["error"] == "ValueError: boom"
    assert body["traceback"] == trace
    listed = client.get("/v1/jobs").json()["data"][0]
    assert listed["id"] == job_id and listed["traceback"] == trace


def _events(client: TestClient, job_id: str, **kwargs: object) -> list:
    from spartan.client import parse_sse

    with client.stream("GET", f"/v1/jobs/{job_id}/events", **kwargs) as r:
        assert r.status_code == 200
        return list(parse_sse(r.iter_lines()))


def _is_record(event: Any) -> bool:
    """An event of a stored record (not a status change: their progress here is None)."""
    return event.event == "epoch" or (event.event == "progress" and bool(event.data["progress"]))


def test_events_carry_record_ids_and_resume_after_last_event_id(
    client: TestClient, settings: Settings
) -> None:
    job_id = client.post("/v1/jobs", json=tiny_spec()).json()["id"]
    store = get_store(settings.database_url)
    store.start_attempt(job_id=job_id, worker="w1")

    def work() -> None:
        for step in (1, 2, 3, 4):
            time.sleep(0.3)
            store.add_metric(job_id=job_id, kind="progress", data=_point(step))
        store.add_metric(job_id=job_id, kind="epoch", data={"epoch": 1, "val_top1": 0.5})
        time.sleep(0.3)
        store.finish(job_id=job_id, status="succeeded", metrics={"top1": 0.5})

    thread = threading.Thread(target=work)
    thread.start()
    live = _events(client, job_id, params={"last_event_id": "0"})  # from the first record on
    thread.join()
    assert [e.event for e in live][-1] == "end"
    steps = [
        e.data["progress"]["step"] for e in live if e.event == "progress" and e.data["progress"]
    ]
    assert steps[-4:] == [1, 2, 3, 4]
    assert [e.data["epoch"] for e in live if e.event == "epoch"] == [{"epoch": 1, "val_top1": 0.5}]
    ids = [int(e.id) for e in live]
    assert ids == sorted(ids) and ids[-1] == store.last_metric_id(job_id=job_id)

    # reconnect after the second step's event: the records after it, once each, then the end
    second = next(
        e for e in live if e.event == "progress" and (e.data["progress"] or {}).get("step") == 2
    )
    for kwargs in (
        {"headers": {"Last-Event-ID": second.id}},
        {"params": {"last_event_id": second.id}},
    ):
        resumed = _events(client, job_id, **kwargs)
        assert [(e.event, e.id) for e in resumed[:-1]] == [
            (e.event, e.id) for e in live if _is_record(e) and int(e.id) > int(second.id)
        ]
        assert [e.data["progress"]["step"] for e in resumed if e.event == "progress"] == [3, 4]
        assert resumed[-1].event == "end" and resumed[-1].data["status"] == "succeeded"

    # from the start: every record; an id that is not ours: a fresh stream (now, then the end)
    everything = _events(client, job_id, headers={"Last-Event-ID": "0"})
    assert [e.event for e in everything] == ["progress"] * 4 + ["epoch", "end"]
    fresh = _events(client, job_id, headers={"Last-Event-ID": "not-an-id"})
    assert [e.event for e in fresh] == ["progress", "end"]
    assert fresh[0].id == str(store.last_metric_id(job_id=job_id))

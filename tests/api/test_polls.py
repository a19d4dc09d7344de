"""Polls (``api.polls``): GET /v1/jobs/{id} answers what JobPublic serializes, shows every
stored change at the next poll, keeps owners apart and holds a bounded cache."""

from __future__ import annotations

import json

from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.main import create_app
from api.polls import PollCache
from api.schemas import JobPublic
from spartan.keys import create_api_key
from spartan.settings import Settings
from spartan.store import get_store


def _public(settings: Settings, job_id: str) -> dict:
    job = get_store(settings.database_url).get_job(job_id=job_id)
    assert job is not None
    return json.loads(JobPublic.from_job(job).model_dump_json())


def test_a_poll_answers_the_job_as_jobpublic_serializes_it(
    client: TestClient, settings: Settings
) -> None:
    store = get_store(settings.database_url)
    job, _ = store.create_job(owner="local", spec={"name": "p", "resources": {"queue": "q"}})
    r = client.get(f"/v1/jobs/{job.id}")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == _public(settings, job.id)
    assert r.json()["spec"] == {"name": "p", "resources": {"queue": "q"}}
    assert r.json()["created_at"].endswith("Z")  # stored times are UTC


def test_every_stored_change_shows_at_the_next_poll(
    client: TestClient, settings: Settings, app: FastAPI
) -> None:
    store = get_store(settings.database_url)
    job, _ = store.create_job(owner="local", spec={"name": "p"})
    url = f"/v1/jobs/{job.id}"
    assert client.get(url).json()["status"] == "queued"
    assert client.get(url).json() == _public(settings, job.id)  # from the cache
    # as a worker process would write them, straight into the store
    claimed = store.start_attempt(job_id=job.id, worker="w/1")
    assert claimed is not None
    assert client.get(url).json()["status"] == "running"
    store.update_progress(job_id=job.id, progress={"step": 3, "loss": 0.5})
    assert client.get(url).json()["progress"] == {"step": 3, "loss": 0.5}
    store.update_progress(job_id=job.id, progress={"step": 4, "loss": 0.25})
    assert client.get(url).json()["progress"] == {"step": 4, "loss": 0.25}
    store.finish(job_id=job.id, status="failed", error="boom", traceback="Traceback ...")
    body = client.get(url).json()
    assert (body["status"], body["error"], body["traceback"]) == ("failed", "boom", "Traceback ...")
    assert body == _public(settings, job.id)
    assert len(app.state.polls._entries) == 1  # one entry per job, replaced as it changes


def test_an_unknown_job_is_404_naming_the_path(client: TestClient) -> None:
    r = client.get("/v1/jobs/job_nope")
    assert r.status_code == 404
    assert r.json()["detail"][0]["loc"] == ["path", "job_id"]


def test_another_owners_job_is_404_even_once_cached(settings: Settings) -> None:
    settings.auth_enabled = True
    store = get_store(settings.database_url)
    alice, bob = create_api_key(store, owner="alice"), create_api_key(store, owner="bob")
    job, _ = store.create_job(owner="alice", spec={"name": "a"})
    with TestClient(create_app(settings)) as client:
        url = f"/v1/jobs/{job.id}"
        assert client.get(url, headers={"Authorization": f"Bearer {alice}"}).status_code == 200
        r = client.get(url, headers={"Authorization": f"Bearer {bob}"})
        assert r.status_code == 404 and r.json()["detail"][0]["loc"] == ["path", "job_id"]
        assert client.get(url).status_code == 401


def test_the_cache_keeps_the_most_recently_polled_jobs(settings: Settings) -> None:
    store = get_store(settings.database_url)
    ids = [store.create_job(owner="local", spec={"name": str(i)})[0].id for i in range(4)]
    polls = PollCache(store, maxsize=2)
    for job_id in ids:
        assert json.loads(polls.job_json(job_id=job_id, owner="local")) == _public(settings, job_id)
    polls.job_json(job_id=ids[2], owner="local")
    assert list(polls._entries) == [ids[3], ids[2]]

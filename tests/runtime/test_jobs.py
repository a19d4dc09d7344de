"""Running a stored job in-process (``execute_job``): idempotency, attempts, cancel, SIGTERM,
failure.

The same paths run in a real Celery worker in ``test_celery_worker.py``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from runtime import jobs
from runtime.jobs import execute_job
from spartan.lease import holder_id
from spartan.resolve import artifact_dir as job_artifact_dir
from spartan.resolve import checkpoint_path as job_checkpoint_path
from spartan.settings import Settings
from spartan.spec import JobSpec
from spartan.store import JobStore, get_store

from .conftest import tiny_spec


class RecordingBroker:
    """A broker double: records the messages the code under test sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.resumed: list[str] = []  # the ids sent ahead of new jobs

    def enqueue(self, job_id: str, *, queue: str, resume: bool = False) -> None:
        self.sent.append((job_id, queue))
        if resume:
            self.resumed.append(job_id)

    def pending_jobs(self, queue: str) -> set[str] | None:
        """Every message sent stays in the broker (none is consumed)."""
        return {job_id for job_id, q in self.sent if q == queue}

    def ping(self) -> None:
        return None

    def terminate(self, job_id: str) -> bool:
        return False


@pytest.fixture
def store(wsettings: Settings) -> JobStore:
    return get_store(wsettings.database_url)


@pytest.fixture
def broker() -> RecordingBroker:
    return RecordingBroker()


def _job(store: JobStore, spec: JobSpec | dict[str, Any]) -> str:
    body = spec if isinstance(spec, dict) else spec.model_dump(mode="json")
    job, _ = store.create_job(owner="alice", spec=body)
    return job.id


def _on_progress(monkeypatch: pytest.MonkeyPatch, action: Any, *, at_step: int = 2) -> None:
    """Run ``action()`` once, when the job first reports training progress at ``at_step``."""
    original = jobs.JobMonitor.progress
    done = {"flag": False}

    def progress(self: Any, p: dict[str, Any]) -> None:
        original(self, p)
        if not done["flag"] and p["phase"] == "training" and p["step"] >= at_step:
            done["flag"] = True
            action()

    monkeypatch.setattr(jobs.JobMonitor, "progress", progress)


def test_preempt_then_resume_then_idempotent(
    wsettings: Settings,
    store: JobStore,
    broker: RecordingBroker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job_id = _job(store, tiny_spec(resources={"queue": "q1"}))
    _on_progress(monkeypatch, lambda: os.kill(os.getpid(), signal.SIGTERM))
    assert execute_job(job_id, worker="n1/1", settings=wsettings, broker=broker) == "preempted"
    job = store.get_job(job_id=job_id)
    assert job is not None and job.status == "queued"
    assert job.attempts == 0  # a clean preemption does not count against the limit
    assert broker.sent == [(job_id, "q1")]
    assert job_checkpoint_path(wsettings, job_id).exists()
    assert signal.getsignal(signal.SIGTERM) is not None  # handler restored

    monkeypatch.undo()
    assert execute_job(job_id, worker="n2/2", settings=wsettings) == "succeeded"
    job = store.get_job(job_id=job_id)
    assert job is not None and job.status == "succeeded" and job.attempts == 1
    assert job.metrics is not None and {"dense", "final", "history"} <= set(job.metrics)
    assert job.progress is not None and job.progress["phase"] == "done"
    assert (job_artifact_dir(wsettings, job_id) / "model.safetensors").exists()
    assert not job_checkpoint_path(wsettings, job_id).parent.exists()

    # a re-delivered message for a finished job changes nothing
    assert execute_job(job_id, worker="n3/3", settings=wsettings) == "noop"
    again = store.get_job(job_id=job_id)
    assert again is not None and again.attempts == 1 and again.status == "succeeded"


def test_cancel_is_seen_within_a_step(
    wsettings: Settings, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = _job(store, tiny_spec())
    steps: list[int] = []
    original = jobs.JobMonitor.progress

    def progress(self: Any, p: dict[str, Any]) -> None:
        original(self, p)
        if p["phase"] == "training":
            steps.append(p["step"])
            if len(steps) == 1:
                store.request_cancel(job_id=job_id)

    monkeypatch.setattr(jobs.JobMonitor, "progress", progress)
    assert execute_job(job_id, worker="n1/1", settings=wsettings) == "cancelled"
    job = store.get_job(job_id=job_id)
    assert job is not None and job.status == "cancelled"
    assert steps == [steps[0]]  # no further training step was reported
    assert not (job_artifact_dir(wsettings, job_id) / "metrics.json").exists()


def test_failure_records_reason_and_traceback(
    wsettings: Settings, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = wsettings.data_roots[0] / "pics"
    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(6):
                Image.new("RGB", (8, 8), (100 * (c == "a"), i, 0)).save(
                    root / split / c / f"{i}.png"
                )
    spec = tiny_spec(
        data={"source": "imagefolder", "path": str(root)},
        model={"input_size": [3, 8, 8]},
        training={"batch_size": 2},
    )
    job_id = _job(store, spec)
    _on_progress(monkeypatch, lambda: shutil.rmtree(root), at_step=1)
    with pytest.raises(FileNotFoundError):
        execute_job(job_id, worker="n1/1", settings=wsettings)
    job = store.get_job(job_id=job_id)
    assert job is not None and job.status == "failed"
    assert job.error is not None and job.error.startswith("FileNotFoundError: ")
    assert job.traceback is not None and "Traceback (most recent call last)" in job.traceback
    log = job_artifact_dir(wsettings, job_id) / "log.txt"  # the job's log has it too
    assert "Traceback (most recent call last)" in log.read_text()


def test_invalid_stored_spec_fails_with_the_field(wsettings: Settings, store: JobStore) -> None:
    body = tiny_spec().model_dump(mode="json")
    body["model"]["name"] = "resnet1000"
    job_id = _job(store, body)
    with pytest.raises(ValueError, match=r"^model\.name"):
        execute_job(job_id, worker="n1/1", settings=wsettings)
    job = store.get_job(job_id=job_id)
    assert job is not None and job.status == "failed"
    assert job.error is not None and job.error.startswith("ValueError: model.name: unknown timm")


def test_delivery_attempt_limit(wsettings: Settings, store: JobStore) -> None:
    job_id = _job(store, tiny_spec())
    for _ in range(wsettings.max_delivery_attempts):  # three workers lost on node n1
        store.start_attempt(job_id=job_id, worker="n1/1")
    assert execute_job(job_id, worker="n1/2", settings=wsettings) == "failed"
    job = store.get_job(job_id=job_id)
    assert job is not None and job.status == "failed"
    assert job.error is not None and job.error.startswith("delivery attempts: ")
    assert job.attempts == wsettings.max_delivery_attempts + 1


def test_duplicate_delivery_while_running_elsewhere(wsettings: Settings, store: JobStore) -> None:
    job_id = _job(store, tiny_spec())
    store.start_attempt(job_id=job_id, worker="other-node/7")
    assert execute_job(job_id, worker="n1/1", settings=wsettings) == "duplicate"
    job = store.get_job(job_id=job_id)
    assert job is not None and job.attempts == 1 and job.worker == "other-node/7"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_redelivery_of_a_job_whose_local_process_died_is_taken_at_once(
    wsettings: Settings, store: JobStore
) -> None:
    job_id = _job(store, tiny_spec())
    store.start_attempt(job_id=job_id, worker="n1/1", holder=holder_id(_dead_pid()), lease_s=600)
    job = store.get_job(job_id=job_id)
    assert job is not None
    alive, seen = jobs._claimant_alive(job, worker="n2/2", store=store, settings=wsettings)
    assert not alive and seen is not None and seen.attempts == 1
    # the claim is compare-and-set: of two deliveries deciding on the same snapshot, one wins
    assert store.start_attempt(job_id=job_id, worker="n2/2", holder="b", expected=seen)
    assert store.start_attempt(job_id=job_id, worker="n3/3", holder="c", expected=seen) is None


def test_redelivery_follows_the_claimants_lease(wsettings: Settings, store: JobStore) -> None:
    """Another machine's claimant: alive while it renews its lease, gone when it stops."""
    wsettings.lease_ttl_s = 0.6
    job_id = _job(store, tiny_spec())
    started = store.start_attempt(
        job_id=job_id, worker="n1/1", holder="elsewhere/7@x:1", lease_s=0.6
    )
    assert started is not None
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(0.1):
            store.heartbeat(job_id=job_id, attempt=started.attempts, lease_s=0.6)

    renewer = threading.Thread(target=renew)
    renewer.start()
    try:
        alive, _ = jobs._claimant_alive(started, worker="n2/2", store=store, settings=wsettings)
        assert alive
    finally:
        stop.set()
        renewer.join()
    job = store.get_job(job_id=job_id)
    assert job is not None
    t0 = time.monotonic()
    alive, seen = jobs._claimant_alive(job, worker="n2/2", store=store, settings=wsettings)
    assert not alive and seen is not None
    assert time.monotonic() - t0 < 0.6 + 1.0  # the lease's time to live, plus a poll


def test_cancel_flag_on_redelivery(wsettings: Settings, store: JobStore) -> None:
    job_id = _job(store, tiny_spec())
    store.start_attempt(job_id=job_id, worker="n1/1")
    store.request_cancel(job_id=job_id)
    assert execute_job(job_id, worker="n1/2", settings=wsettings) == "cancelled"
    assert execute_job("job_missing", worker="n1/2", settings=wsettings) == "missing"


def test_paths(wsettings: Settings) -> None:
    assert (
        job_checkpoint_path(wsettings, "job_x")
        == Path(wsettings.checkpoint_dir) / "job_x" / "checkpoint.pt"
    )
    assert job_artifact_dir(wsettings, "job_x") == Path(wsettings.artifact_dir) / "job_x"


def test_time_limit_checkpoints_and_fails(wsettings: Settings, store: JobStore) -> None:
    from runtime.training import JobTimeLimitExceeded

    job_id = _job(store, tiny_spec(training={"epochs": 100}, resources={"time_limit_s": 10}))
    with pytest.raises(JobTimeLimitExceeded):
        execute_job(job_id, worker="n1/1", settings=wsettings)
    job = store.get_job(job_id=job_id)
    assert job is not None and job.status == "failed"
    assert job.error is not None
    assert job.error.startswith("JobTimeLimitExceeded: resources.time_limit_s: the job ran for")
    assert job_checkpoint_path(wsettings, job_id).exists()

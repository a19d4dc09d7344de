"""Real Celery worker processes (``spartan worker``) against Redis and the embedded transport.

Each test starts workers as subprocesses on a queue of its own (other workers on the same Redis
never take its messages), submits jobs by writing them to the store and sending their ids, and
watches the store. Redis: ``redis://127.0.0.1:6379/5``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from runtime.models import create_model
from runtime.training import run_training
from runtime.training.stats import masks_sha256
from spartan.queue import CeleryBroker
from spartan.settings import Settings, get_settings
from spartan.spec import JobSpec
from spartan.store import Job, JobStore, get_store
from spartan_core.layers import maskable_targets

from .conftest import tiny_spec

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
REDIS_URL = "redis://127.0.0.1:6379/5"
REDIS_FLUSHED_URL = "redis://127.0.0.1:6379/7"  # only the flush test uses it: it is emptied
TIMEOUT_S = 300.0


def _wait(what: str, check: Callable[[], Any], timeout: float = TIMEOUT_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Env:
    """Settings shared by the test process and its worker processes (via the environment)."""

    def __init__(self, home: Path, broker: str | None, **extra: str) -> None:
        self.home = home
        self.queue = f"t-{uuid.uuid4().hex[:10]}"
        self.vars = {
            "SPARTAN_HOME": str(home),
            "SPARTAN_DATA_ROOTS": json.dumps([str(home / "data")]),
            "SPARTAN_PROGRESS_INTERVAL_S": "0.2",
            **extra,
        }
        if broker is not None:
            self.vars["SPARTAN_BROKER_URL"] = broker
        (home / "data").mkdir(parents=True, exist_ok=True)
        self.workers: list[subprocess.Popen[bytes]] = []

    def settings(self) -> Settings:
        """Settings built from these variables (also installed as the process-wide ones)."""
        os.environ.update(self.vars)
        get_settings.cache_clear()
        return get_settings()

    @property
    def store(self) -> JobStore:
        return get_store(self.settings().database_url)

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        log = open(self.home / f"{name}.log", "wb")  # noqa: SIM115 (lives as long as the worker)
        env = {**os.environ, **self.vars}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cli",
                "worker",
                "--queue",
                self.queue,
                "--hostname",
                f"{name}@%h",
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the pool child goes with it
        )
        self.workers.append(proc)
        _wait(f"worker {name} ready", lambda: b" ready." in self.log(name), timeout=120)
        return proc

    def log(self, name: str) -> bytes:
        return (self.home / f"{name}.log").read_bytes()

    def submit(self, spec: JobSpec) -> str:
        """Store the job on this test's queue and send its id, as the API does."""
        settings = self.settings()
        body = spec.model_dump(mode="json")
        body["resources"]["queue"] = self.queue
        job, _ = get_store(settings.database_url).create_job(owner="tester", spec=body)
        CeleryBroker(settings).enqueue(job.id, queue=self.queue)
        return job.id

    def job(self, job_id: str) -> Job:
        job = self.store.get_job(job_id=job_id)
        assert job is not None
        return job

    def wait_status(self, job_id: str, status: str) -> Job:
        def reached() -> Job | None:
            job = self.job(job_id)
            if job.finished and job.status != status:
                raise AssertionError(f"job ended {job.status}: {job.error}\n{job.traceback}")
            return job if job.status == status else None

        return _wait(f"job {job_id} {status}", reached)

    def wait_step(self, job_id: str, step: int) -> Job:
        def reached() -> Job | None:
            job = self.job(job_id)
            progress = job.progress or {}
            ok = progress.get("phase") == "training" and progress.get("step", 0) >= step
            return job if ok else None

        return _wait(f"job {job_id} at step {step}", reached)

    def close(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        broker = self.vars.get("SPARTAN_BROKER_URL", "")
        if broker.startswith("redis://"):
            import redis

            keys = [self.queue] + [f"{self.queue}\x06\x16{p}" for p in (3, 6, 9)]  # priorities
            redis.Redis.from_url(broker).delete(*keys)  # leave no message behind
        for key in self.vars:
            os.environ.pop(key, None)
        get_settings.cache_clear()


@pytest.fixture
def redis_env(tmp_path: Path) -> Iterator[Env]:
    env = Env(tmp_path / "home", REDIS_URL)
    yield env
    env.close()


def _check_artifacts(env: Env, job: Job) -> None:
    """model.safetensors loads into a fresh architecture and has the reported sparsity."""
    spec = JobSpec.model_validate(job.spec)
    folder = Path(env.settings().artifact_dir) / job.id
    model = create_model(spec.model)
    model.load_state_dict(load_file(folder / "model.safetensors"))
    params = dict(model.named_parameters())
    weights = [params[t.name] for t in maskable_targets(model)]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert job.metrics is not None
    assert zeros == pytest.approx(job.metrics["final"]["sparsity"], abs=1e-4)
    assert zeros == pytest.approx(spec.sparsity.sparsity, abs=1e-3)
    assert 0.0 <= job.metrics["final"]["top1"] <= job.metrics["final"]["top5"] <= 1.0


def _pid(job: Job) -> int:
    assert job.worker is not None
    return int(job.worker.rsplit("/", 1)[1])


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie is gone for our purpose
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" in status.read_text()


def test_redis_worker_runs_cancels_fails_and_ignores_duplicates(redis_env: Env) -> None:
    env = redis_env
    env.start_worker("w1")

    # a tiny job to success
    job_id = env.submit(tiny_spec())
    job = env.wait_status(job_id, "succeeded")
    assert job.attempts == 1
    _check_artifacts(env, job)

    # the same message again: a no-op
    CeleryBroker(env.settings()).enqueue(job_id, queue=env.queue)
    _wait(
        "duplicate ignored", lambda: f"job {job_id} is already succeeded".encode() in env.log("w1")
    )
    assert env.job(job_id).attempts == 1

    # cancellation: seen within a step, then the pool process exits
    long_id = env.submit(tiny_spec(training={"epochs": 50}))
    running = env.wait_step(long_id, 2)
    env.store.request_cancel(job_id=long_id)
    cancelled = env.wait_status(long_id, "cancelled")
    assert cancelled.progress is not None and cancelled.progress["step"] < 50 * 11
    _wait("the job's process to exit", lambda: _gone(_pid(running)), timeout=60)

    # a data folder removed mid-run: failed with a reason and the traceback
    root = env.home / "data" / "pics"
    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(8):
                Image.new("RGB", (8, 8), (120 * (c == "a"), 9 * i, 0)).save(
                    root / split / c / f"{i}.png"
                )
    failing = env.submit(
        tiny_spec(
            data={"source": "imagefolder", "path": str(root)},
            model={"input_size": [3, 8, 8]},
            training={"batch_size": 2, "epochs": 50},
        )
    )
    env.wait_step(failing, 1)
    import shutil

    shutil.rmtree(root)
    job = env.wait_status(failing, "failed")
    assert job.error is not None and job.error.startswith("FileNotFoundError: ")
    assert job.traceback is not None and "FileNotFoundError" in job.traceback


def test_embedded_sqlite_transport(tmp_path: Path) -> None:
    env = Env(tmp_path / "home", broker=None)  # defaults: sqla+sqlite broker, db+sqlite results
    try:
        assert env.settings().broker_url.startswith("sqla+sqlite:///")
        env.start_worker("embedded")
        job = env.wait_status(env.submit(tiny_spec()), "succeeded")
        _check_artifacts(env, job)
    finally:
        env.close()


def test_sigkill_then_new_worker_resumes_to_the_same_result(tmp_path: Path) -> None:
    env = Env(tmp_path / "home", REDIS_URL, SPARTAN_RECONCILE_INTERVAL_S="1")
    try:
        spec = tiny_spec(training={"epochs": 3, "checkpoint_every_steps": 2})
        first = env.start_worker("doomed")
        job_id = env.submit(spec)
        checkpoint = Path(env.settings().checkpoint_dir) / job_id / "checkpoint.pt"
        env.wait_step(job_id, 6)
        _wait("a checkpoint", checkpoint.exists)
        os.killpg(first.pid, signal.SIGKILL)  # parent and pool child, no goodbye
        first.wait(timeout=30)
        saved = torch.load(checkpoint, weights_only=True)["position"]["step"]
        assert 0 < saved < 33
        assert env.job(job_id).status == "running"  # nobody told the store

        env.start_worker("rescuer")  # its reclaimer re-queues the job of the dead process
        job = env.wait_status(job_id, "succeeded")
        assert job.attempts == 2
        rescuer_log = env.log("rescuer").decode()
        assert "resumed at epoch" in rescuer_log
        _same_result_as_an_undisturbed_run(env, job, spec, tmp_path / "ref")
    finally:
        env.close()


def _same_result_as_an_undisturbed_run(env: Env, job: Job, spec: JobSpec, ref_dir: Path) -> None:
    ref = run_training(spec, out_dir=ref_dir, checkpoint_path=None, settings=env.settings())
    folder = Path(env.settings().artifact_dir) / job.id
    for name in ("model.safetensors", "masks.safetensors"):
        a, b = load_file(folder / name), load_file(ref_dir / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert ref.metrics is not None and job.metrics is not None
    for key in ("dense", "final", "history", "mask_sha256"):
        assert job.metrics[key] == ref.metrics[key], key


def test_sigkill_of_the_pool_process_resumes_within_a_minute(tmp_path: Path) -> None:
    """Two workers; the process running the job is SIGKILLed, its worker lives on. Default
    lease and reconcile settings: the figure users get."""
    env = Env(tmp_path / "home", REDIS_URL)
    try:
        spec = tiny_spec(training={"epochs": 3, "checkpoint_every_steps": 2})
        env.start_worker("w1")
        env.start_worker("w2")
        job_id = env.submit(spec)
        checkpoint = Path(env.settings().checkpoint_dir) / job_id / "checkpoint.pt"
        running = env.wait_step(job_id, 6)
        _wait("a checkpoint", checkpoint.exists)
        os.kill(_pid(running), signal.SIGKILL)
        killed = time.monotonic()

        def resumed() -> Job | None:
            job = env.job(job_id)
            progress = job.progress or {}
            again = job.attempts == 2 and progress.get("attempt") == 2
            return job if again and progress.get("phase") == "training" else None

        job = _wait("the job resumed", resumed, timeout=60)
        latency = time.monotonic() - killed
        print(f"resumed {latency:.1f} s after the SIGKILL on {job.worker}")
        job = env.wait_status(job_id, "succeeded")
        assert job.attempts == 2
        assert b"resumed at epoch" in env.log("w1") + env.log("w2")
        _same_result_as_an_undisturbed_run(env, job, spec, tmp_path / "ref")
    finally:
        env.close()


def test_a_job_on_two_devices_runs_as_two_ranks_in_one_task(redis_env: Env) -> None:
    env = redis_env
    env.start_worker("two-ranks")
    job = env.wait_status(env.submit(tiny_spec(resources={"devices": 2})), "succeeded")
    assert job.attempts == 1
    _check_artifacts(env, job)
    assert job.metrics is not None and job.metrics["devices"] == 2
    hashes = job.metrics["mask_sha256"]
    assert len(hashes) == 2 and hashes[0] == hashes[1]
    masks = load_file(Path(env.settings().artifact_dir) / job.id / "masks.safetensors")
    assert hashes[0] == masks_sha256(masks)


def _children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    return [int(c) for t in tasks.iterdir() for c in (t / "children").read_text().split()]


def test_sigkill_of_rank_0_on_two_devices_leaves_no_rank_and_resumes(tmp_path: Path) -> None:
    """The pool process running rank 0 is SIGKILLed: rank 1 dies with it, and the job is
    redelivered and resumed to the result of an uninterrupted 2-rank run."""
    env = Env(tmp_path / "home", REDIS_URL, SPARTAN_RECONCILE_INTERVAL_S="1")
    try:
        spec = tiny_spec(
            training={"epochs": 3, "checkpoint_every_steps": 2}, resources={"devices": 2}
        )
        env.start_worker("w1")
        job_id = env.submit(spec)
        checkpoint = Path(env.settings().checkpoint_dir) / job_id / "checkpoint.pt"
        running = env.wait_step(job_id, 4)
        _wait("a checkpoint", checkpoint.exists)
        ranks = _children(_pid(running))
        assert len(ranks) == 1  # rank 1; rank 0 is the pool process itself
        os.kill(_pid(running), signal.SIGKILL)
        _wait("rank 1 to die with rank 0", lambda: _gone(ranks[0]), timeout=15)
        job = env.wait_status(job_id, "succeeded")
        assert job.attempts == 2
        assert b"resumed at epoch" in env.log("w1")
        assert job.metrics is not None and len(set(job.metrics["mask_sha256"])) == 1
        _same_result_as_an_undisturbed_run(env, job, spec, tmp_path / "ref")
    finally:
        env.close()


def test_jobs_survive_the_broker_losing_every_message(tmp_path: Path) -> None:
    """Redis emptied (a restart without persistence) while one job runs and two wait."""
    import redis

    env = Env(
        tmp_path / "home",
        REDIS_FLUSHED_URL,
        SPARTAN_RECONCILE_INTERVAL_S="1",
        SPARTAN_RESEND_AFTER_S="3",
    )
    try:
        env.start_worker("w1")
        ids = [env.submit(tiny_spec(training={"epochs": e})) for e in (3, 1, 1)]
        env.wait_step(ids[0], 2)
        broker = CeleryBroker(env.settings())
        assert set(ids[1:]) <= (broker.pending_jobs(env.queue) or set())  # two waiting
        redis.Redis.from_url(REDIS_FLUSHED_URL).flushdb()
        flushed = time.monotonic()
        assert broker.pending_jobs(env.queue) == set()

        def back() -> bool:
            waiting = {i for i in ids[1:] if env.job(i).status == "queued"}
            return waiting <= (broker.pending_jobs(env.queue) or set())

        _wait("the lost messages sent again", back, timeout=60)
        print(f"lost messages sent again {time.monotonic() - flushed:.1f} s after the flush")
        for job_id in ids:
            assert env.wait_status(job_id, "succeeded").attempts == 1
        assert b"re-sent 2 queued job(s)" in env.log("w1")
    finally:
        env.close()


def test_sigterm_to_the_worker_checkpoints_and_requeues(redis_env: Env) -> None:
    import redis

    env = redis_env
    worker = env.start_worker("preempted")
    job_id = env.submit(tiny_spec(training={"epochs": 50, "checkpoint_every_steps": 1000}))
    env.wait_step(job_id, 2)
    os.kill(worker.pid, signal.SIGTERM)  # the parent only: it forwards SIGTERM to the job
    worker.wait(timeout=120)
    job = env.job(job_id)
    assert job.status == "queued" and job.attempts == 0, (job.status, job.error)
    checkpoint = Path(env.settings().checkpoint_dir) / job_id / "checkpoint.pt"
    assert torch.load(checkpoint, weights_only=True)["position"]["step"] >= 2
    assert redis.Redis.from_url(REDIS_URL).llen(env.queue) == 1  # its id was sent again
    assert b"checkpointing and re-queueing" in env.log("preempted")

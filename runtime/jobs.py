"""Running one stored job: a job id in, the job's outcome recorded in the store.

``execute_job`` is what the Celery task ``spartan.run_job`` does (``worker.tasks``), as a plain
function. It is idempotent: it re-reads the job, does nothing for a finished one, counts the
delivery, gives up past ``max_delivery_attempts``, and otherwise runs the training (resuming
from the job's checkpoint when there is one), then records the outcome:

- success: ``succeeded`` with the metrics, artifacts in ``artifact_dir/<job id>/``, the plots
  drawn from the job's stored series and, when the job is tracked, its MLflow run (``publish``);
- cancellation (``cancel_requested``, polled at a bounded rate and seen within one training
  step): ``cancelled``, and the process ends with the task (one task per child process);
- SIGTERM (preemption, a stopping worker): a checkpoint is written, the job goes back to
  ``queued`` and its message is sent again;
- any error: ``failed`` with a short reason and the traceback (the curves and the MLflow run
  are published too), then the error is re-raised so Celery logs it too.

The job's log goes to ``log.txt`` in its artifact folder while it runs (``spartan.joblog``),
and every progress report and epoch record to its metric series in the store.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import signal
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from types import FrameType
from typing import Any, Literal

from sqlalchemy.exc import SQLAlchemyError

from runtime import tracking
from runtime.artifacts import COST_REPORT_JSON
from runtime.plots import write_plots
from runtime.training import TrainHooks, run_training
from spartan.joblog import capture_log
from spartan.lease import holder_gone, holder_id, lease_expired, renew_interval_s
from spartan.queue import Broker, CeleryBroker, send_job
from spartan.resolve import artifact_dir, checkpoint_path, job_log_path
from spartan.series import metric_series
from spartan.settings import Settings, get_settings
from spartan.spec import JobSpec
from spartan.store import Job, JobStore, get_store

log = logging.getLogger(__name__)

Outcome = Literal[
    "succeeded", "failed", "cancelled", "preempted", "noop", "missing", "duplicate", "abandoned"
]
# How often the cancel flag is read from the store, at most (seconds).
CANCEL_POLL_S = 1.0


def execute_job(
    job_id: str, *, worker: str, settings: Settings | None = None, broker: Broker | None = None
) -> Outcome:
    """Run the stored job ``job_id`` and record its outcome.

    Args:
        job_id: the job to run.
        worker: ``<celery node>/<pid>`` of the process running it.
        settings: default: the process-wide settings.
        broker: where a preempted job is sent again (default: the Celery broker of settings).
    """
    settings = settings if settings is not None else get_settings()
    store = get_store(settings.database_url)
    job = store.get_job(job_id=job_id)
    if job is None:
        log.warning("job %s does not exist; message dropped", job_id)
        return "missing"
    if job.finished:
        log.info("job %s is already %s; duplicate delivery ignored", job_id, job.status)
        return "noop"
    if job.status == "running":
        alive, seen = _claimant_alive(job, worker=worker, store=store, settings=settings)
        if seen is None:
            return "noop"
        if alive:
            log.warning("job %s is running on %s; duplicate delivery ignored", job_id, seen.worker)
            return "duplicate"
        job = seen
    started = store.start_attempt(
        job_id=job_id,
        worker=worker,
        holder=holder_id(),
        lease_s=settings.lease_ttl_s,
        expected=job,
    )
    if started is None:
        again = store.get_job(job_id=job_id)
        if again is None or again.finished:
            return "noop"
        log.warning("job %s: claimed by %s first; duplicate ignored", job_id, again.worker)
        return "duplicate"
    if started.attempts > settings.max_delivery_attempts:
        store.finish(
            job_id=job_id,
            status="failed",
            error=(
                f"delivery attempts: the job was delivered {started.attempts} times, more than "
                f"max_delivery_attempts={settings.max_delivery_attempts}; its worker was lost "
                "each time (killed, out of memory or crashed)"
            ),
        )
        return "failed"
    if started.cancel_requested:
        store.finish(job_id=job_id, status="cancelled")
        return "cancelled"
    broker = broker if broker is not None else CeleryBroker(settings)
    return _train(started, store=store, broker=broker, settings=settings)


def _train(job: Job, *, store: JobStore, broker: Broker, settings: Settings) -> Outcome:
    """Train with the job's log captured into its artifact folder (``spartan.joblog``)."""
    with capture_log(job_log_path(settings, job.id)):
        log.info("job %s: attempt %d on %s", job.id, job.attempts, job.worker)
        return _train_logged(job, store=store, broker=broker, settings=settings)


def _train_logged(job: Job, *, store: JobStore, broker: Broker, settings: Settings) -> Outcome:
    monitor = JobMonitor(store=store, job=job, settings=settings)
    checkpoint = checkpoint_path(settings, job.id)
    spec: JobSpec | None = None
    try:
        spec = JobSpec.model_validate(job.spec)
        with monitor, _preemption_signal(monitor):
            result = run_training(
                spec,
                out_dir=artifact_dir(settings, job.id),
                checkpoint_path=checkpoint,
                settings=settings,
                hooks=TrainHooks(progress=monitor.progress, stop=monitor.stop, epoch=monitor.epoch),
                owner=job.owner,
            )
    except Exception as exc:  # record the failure in the store, then re-raise
        log.exception("job %s failed", job.id)  # first: the log is complete once it has ended
        if spec is not None:
            publish(job.id, spec, store=store, settings=settings, metrics=None)
        store.finish(
            job_id=job.id,
            status="failed",
            error=short_reason(exc),
            traceback=traceback.format_exc(),
        )
        raise
    if result.status == "succeeded":
        publish(job.id, spec, store=store, settings=settings, metrics=result.metrics)
        store.finish(job_id=job.id, status="succeeded", metrics=result.metrics)
        shutil.rmtree(checkpoint.parent, ignore_errors=True)
        return "succeeded"
    if monitor.reason == "abandon":
        log.warning("job %s was taken from this worker (%s); stopping", job.id, monitor.detail)
        return "abandoned"
    if result.status == "cancelled":
        store.finish(job_id=job.id, status="cancelled")
        shutil.rmtree(checkpoint.parent, ignore_errors=True)
        return "cancelled"
    # preempted: the checkpoint is written; hand the job to the next worker
    if store.requeue_preempted(job_id=job.id):
        queue = send_job(job, store=store, broker=broker, settings=settings)
        log.info("job %s preempted; checkpointed and re-queued on %s", job.id, queue)
    return "preempted"


def publish(
    job_id: str,
    spec: JobSpec,
    *,
    store: JobStore,
    settings: Settings,
    metrics: dict[str, Any] | None,
) -> None:
    """What people look at, from the job's stored series: the plots (``runtime.plots``)
    into the artifact folder, then the MLflow run (``runtime.tracking``) when the job is
    tracked. ``metrics`` is None for a failed job (no layer plot, the run marked failed)."""
    points, epochs = metric_series(store.list_metrics(job_id=job_id))
    out = artifact_dir(settings, job_id)
    report_path = out / COST_REPORT_JSON
    report = json.loads(report_path.read_text()) if metrics and report_path.is_file() else None
    write_plots(out, points=points, epochs=epochs, cost_report=report)
    uri = tracking.tracking_uri(spec, settings)
    if uri is not None:
        tracking.log_run(
            uri,
            job_id=job_id,
            spec=spec,
            settings=settings,
            points=points,
            epochs=epochs,
            metrics=metrics,
            artifact_dir=out,
            succeeded=metrics is not None,
        )


def short_reason(exc: BaseException) -> str:
    """A one-line reason for a failure: the exception type and the first line of its message."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    reason = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return reason[:500]


def _claimant_alive(
    job: Job, *, worker: str, store: JobStore, settings: Settings
) -> tuple[bool, Job | None]:
    """A message for a running job: is the process holding it alive? Returns (alive, the
    snapshot decided on: the one to take over from when not alive; None if it finished).

    Decided from the claimant itself (``spartan.lease``), never from the age of its progress:

    - the same Celery node as this worker: with one job per worker, its process there ended;
    - a process of this machine that no longer runs: gone at once;
    - otherwise its lease is watched until it is renewed (alive) or expires (gone), at most
      ``lease_ttl_s`` plus two renewals.
    """
    deadline = time.monotonic() + settings.lease_ttl_s + 2 * renew_interval_s(settings)
    first = job.lease_expires_at
    while True:
        if job.status != "running":
            return False, job
        if job.worker is not None and job.worker.rsplit("/", 1)[0] == worker.rsplit("/", 1)[0]:
            return False, _gone(job, "its worker node runs this delivery")
        if holder_gone(job.lease_holder):
            return False, _gone(job, "its process no longer runs")
        if lease_expired(job, settings=settings):
            return False, _gone(job, "its lease expired")
        if job.lease_expires_at is None or job.lease_expires_at != first:
            return True, job  # renewed (or an older worker's fresh progress)
        if time.monotonic() > deadline:
            return True, job  # not renewed, not expired: a skewed clock; the reclaimer decides
        time.sleep(min(0.5, renew_interval_s(settings)))
        again = store.get_job(job_id=job.id)
        if again is None or again.finished:
            return False, None
        if again.attempts != job.attempts or again.lease_holder != job.lease_holder:
            first = again.lease_expires_at  # claimed again meanwhile: watch the new claim
        job = again


def _gone(job: Job, why: str) -> Job:
    log.warning("job %s: taking it over from %s (%s)", job.id, job.lease_holder or job.worker, why)
    return job


class JobMonitor:
    """The training hooks of a job: progress to the store, stop requests from it and SIGTERM.

    A heartbeat thread renews the job's lease and re-writes the last progress every
    ``spartan.lease.renew_interval_s`` while the job runs (also while the model and data are
    being built), so the lease stays valid exactly as long as this process lives;
    ``worker.reclaim`` re-queues jobs whose lease ran out.
    """

    def __init__(self, *, store: JobStore, job: Job, settings: Settings) -> None:
        self.store = store
        self.job_id = job.id
        self.attempt = job.attempts
        self.interval_s = renew_interval_s(settings)
        self.lease_s = settings.lease_ttl_s
        self.poll_s = min(CANCEL_POLL_S, settings.progress_interval_s)
        self.reason: Literal["cancel", "preempt", "abandon"] | None = None
        self.detail = ""
        self.preempt_requested = threading.Event()
        self._last: dict[str, Any] = {"phase": "starting", "attempt": job.attempts}
        self._lock = threading.Lock()
        self._last_poll = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="spartan-heartbeat", daemon=True)

    def __enter__(self) -> JobMonitor:
        self._write()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=10)

    def progress(self, progress: dict[str, Any]) -> None:
        """Record a progress report (the training loop's progress hook): the job's latest
        progress, and one more point of its metric series."""
        # the record first: whoever sees this progress on the job finds it in the series
        self.store.add_metric(
            job_id=self.job_id, kind="progress", data=_plain(progress), attempt=self.attempt
        )
        with self._lock:
            self._last = {**progress, "attempt": self.attempt}
        self._write()

    def epoch(self, entry: dict[str, Any]) -> None:
        """Record an epoch's record in the job's metric series (the epoch hook)."""
        self.store.add_metric(
            job_id=self.job_id, kind="epoch", data=_plain(entry), attempt=self.attempt
        )

    def _write(self) -> None:
        with self._lock:
            progress = {**self._last, "updated_at": datetime.now(UTC).isoformat()}
        self.store.heartbeat(
            job_id=self.job_id, attempt=self.attempt, lease_s=self.lease_s, progress=progress
        )

    def _beat(self) -> None:
        while not self._done.wait(self.interval_s):
            try:
                self._write()
            except SQLAlchemyError as exc:
                log.warning("job %s: heartbeat failed (will retry): %s", self.job_id, exc)

    def stop(self) -> Literal["cancel", "preempt"] | None:
        """The training loop's stop hook: SIGTERM, a cancel flag, or the job taken away."""
        if self.preempt_requested.is_set():
            self.reason = "preempt"
            return "preempt"
        now = time.monotonic()
        if now - self._last_poll < self.poll_s:
            return None
        self._last_poll = now
        job = self.store.get_job(job_id=self.job_id)
        if job is None or job.cancel_requested or job.finished:
            self.reason = "cancel"
            self.detail = "deleted" if job is None else job.status
            return "cancel"
        if job.status != "running" or job.worker is None or job.attempts != self.attempt:
            # Re-queued by a reclaimer that thought this worker dead: stop without touching
            # the job; the new delivery resumes from the last checkpoint.
            self.reason = "abandon"
            self.detail = f"status {job.status}, worker {job.worker}"
            return "cancel"
        return None


def _plain(record: dict[str, Any]) -> dict[str, Any]:
    """A record as JSON stores it: non-finite floats (a diverged loss) become None."""
    return {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()
    }


@contextmanager
def _preemption_signal(monitor: JobMonitor) -> Iterator[None]:
    """While training, SIGTERM asks for a checkpoint and a re-queue instead of killing."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        log.warning("SIGTERM: checkpointing and re-queueing job %s", monitor.job_id)
        monitor.preempt_requested.set()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

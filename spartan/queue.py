"""The task queue: the Celery configuration, the task name, queue routing and the one sender.

The API and the worker both send job messages through ``CeleryBroker.enqueue`` and record them
with ``send_job`` (enqueue, then mark the job enqueued in the store), so every message of a job
looks the same: the task ``spartan.run_job``, the job id as its only argument, the task id
``run-<job id>`` (so it can be revoked), on the queue the job's spec names. The worker's own
Celery app (``worker.celery_app``) is built from the same ``celery_config``.

Settings chosen for long GPU jobs (the known ways Celery loses or duplicates them):

- ``task_acks_late`` + ``task_reject_on_worker_lost``: the message is acknowledged only when the
  task returns; a pool child killed mid-job (OOM, SIGKILL) puts the message back.
- ``worker_prefetch_multiplier=1`` and concurrency 1: a worker reserves one job at a time, so a
  second job never waits behind a week-long first one on the same machine.
- ``worker_max_tasks_per_child=1``: a fresh process per job (no leaked CUDA context or memory).
- ``visibility_timeout`` longer than the job time limit: Redis does not hand a running job's
  message to a second worker while the first still trains.
- no result backend: the job store, not Celery, records every outcome; the task carries only
  the job id, re-reads the job and is idempotent.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, Protocol

from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError

from spartan.resolve import queue_name
from spartan.settings import Settings
from spartan.store import Job, JobStore

log = logging.getLogger(__name__)

TASK_NAME = "spartan.run_job"
# Errors that mean "the broker is unreachable right now", not "the request is wrong".
BROKER_DOWN: tuple[type[BaseException], ...] = (KombuOperationalError, ConnectionError, OSError)
# Seconds of slack between the job time limit and the broker visibility timeout / hard limit.
_TIME_MARGIN_S = 3600


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration derived from ``settings`` (a plain dict, for inspection)."""
    return {
        "broker_url": settings.broker_url,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_max_tasks_per_child": 1,
        "worker_concurrency": 1,
        "task_default_queue": settings.default_queue,
        "task_create_missing_queues": True,
        "task_routes": {TASK_NAME: {"queue": settings.default_queue}},
        # The job's own time limit is enforced by the training loop (it checkpoints first);
        # this hard limit only stops a task that hangs outside the loop.
        "task_time_limit": settings.job_time_limit_s + _TIME_MARGIN_S,
        "broker_transport_options": _transport_options(settings),
        "broker_connection_retry_on_startup": True,
    }


def _transport_options(settings: Settings) -> dict[str, Any]:
    """Broker options: a visibility timeout for brokers that redeliver unacked messages.

    kombu's SQLAlchemy transport passes its options to ``create_engine``, which rejects
    unknown keywords, and it has no visibility timeout to set.
    """
    if settings.broker_url.startswith("sqla+"):
        return {}
    return {"visibility_timeout": settings.job_time_limit_s + 2 * _TIME_MARGIN_S}


def task_id_for(job_id: str) -> str:
    """The Celery task id of every message for ``job_id`` (so it can be revoked)."""
    return f"run-{job_id}"


class Broker(Protocol):
    """What the API and the worker need from the task queue."""

    def enqueue(self, job_id: str, *, queue: str) -> None:
        """Send the job's message (carrying only its id)."""
        ...

    def ping(self) -> None:
        """Raise if the broker cannot be reached."""
        ...

    def terminate(self, job_id: str) -> bool:
        """Hard-stop the task running ``job_id``; False if no worker reported it."""
        ...


_APPS: dict[str, Celery] = {}
_APPS_LOCK = threading.Lock()


def celery_app(settings: Settings, *, include: tuple[str, ...] = ()) -> Celery:
    """The Celery app for ``settings`` (one per distinct configuration, built once).

    Args:
        include: task modules the app imports when a worker starts (the worker's app only).
    """
    config = celery_config(settings)
    key = json.dumps([config, include], sort_keys=True, default=str)
    with _APPS_LOCK:
        app = _APPS.get(key)
        if app is None:
            app = Celery("spartan", include=list(include), set_as_current=False)
            app.conf.update(config)
            _APPS[key] = app
        return app


class CeleryBroker:
    """Celery over the configured broker (Redis, or kombu's SQLAlchemy transport)."""

    def __init__(self, settings: Settings, *, app: Celery | None = None) -> None:
        self.app = app if app is not None else celery_app(settings)

    def enqueue(self, job_id: str, *, queue: str) -> None:
        """Send ``spartan.run_job(job_id)`` to ``queue``, task id ``task_id_for(job_id)``.

        Call it after the job row is committed; the message carries only the id.
        """
        if not job_id:
            raise ValueError("job_id: must be a non-empty job id")
        if not queue:
            raise ValueError("queue: must be a non-empty queue name")
        self.app.send_task(TASK_NAME, args=[job_id], queue=queue, task_id=task_id_for(job_id))
        log.info("enqueued job %s on queue %s", job_id, queue)

    def ping(self) -> None:
        """Raise one of ``BROKER_DOWN`` if the broker does not answer within a few seconds."""
        with self.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=3)

    def terminate(self, job_id: str) -> bool:
        """SIGKILL the task running ``job_id``; False if no worker reported it.

        Remote control needs a broadcast-capable transport (Redis, AMQP); kombu's SQLAlchemy
        transport has none, and there the worker's own cooperative cancel is all there is.
        """
        with self.app.connection_for_write() as conn:
            kinds = conn.transport.implements.exchange_type
            if not kinds or "fanout" not in kinds:
                log.warning(
                    "broker %s cannot broadcast; cannot terminate job %s",
                    conn.transport_cls,
                    job_id,
                )
                return False
        active = self.app.control.inspect(timeout=2.0).active() or {}
        for tasks in active.values():
            for task in tasks:
                if job_id in (task.get("args") or ()):
                    log.warning("terminating task %s of job %s", task["id"], job_id)
                    self.app.control.revoke(task["id"], terminate=True, signal="SIGKILL")
                    return True
        return False


def send_job(job: Job, *, store: JobStore, broker: Broker, settings: Settings) -> str:
    """Send ``job``'s message on the queue its spec names, then record when; returns the queue.

    The one way a job reaches the broker: submission, re-sending lost messages, preemption
    and reclaiming all call it after putting the job in the store as ``queued``.

    Raises:
        one of ``BROKER_DOWN`` when the broker is unreachable (the job is then not marked).
    """
    queue = queue_name(job.spec, settings)
    broker.enqueue(job.id, queue=queue)
    store.mark_enqueued(job_id=job.id)
    return queue

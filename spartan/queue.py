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
- priorities (Redis): a job that ran before (``started_at`` set: a resume after a lost worker
  or a preemption) is sent at ``PRIORITY_RESUME``, new jobs at ``PRIORITY_NEW``; Redis workers
  poll the lower number first, so a resume never waits behind the queue of new jobs. kombu's
  SQLAlchemy transport has no priorities (first in, first out).

The store, not the broker, is the source of truth: ``resend_lost`` (run by every worker's
reconciler and by the API) sends again every queued job whose message the broker does not
hold (``Broker.pending_jobs``), whatever the broker lost (a restart without persistence, a
FLUSHALL, a consumer that died holding the message).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError

from spartan.resolve import queue_name
from spartan.settings import Settings
from spartan.store import Job, JobStore

log = logging.getLogger(__name__)

TASK_NAME = "spartan.run_job"
TASK_ID_PREFIX = "run-"
# Redis message priorities (kombu's default steps 0, 3, 6, 9; workers poll 0 first).
PRIORITY_RESUME = 0
PRIORITY_NEW = 6
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
        # Task events (``celery worker -E``) for Flower and ``celery events``: sent, started,
        # succeeded, failed; a few small messages per job.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
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
    return f"{TASK_ID_PREFIX}{job_id}"


class Broker(Protocol):
    """What the API and the worker need from the task queue."""

    def enqueue(self, job_id: str, *, queue: str, resume: bool = False) -> None:
        """Send the job's message (carrying only its id); ``resume``: ahead of new jobs."""
        ...

    def pending_jobs(self, queue: str) -> set[str] | None:
        """Ids of the jobs whose message ``queue`` holds (waiting, or delivered to a consumer
        recently and not acknowledged); None if this broker cannot tell."""
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
        # A message delivered longer ago whose job is still queued: its consumer died.
        self.unacked_fresh_s = settings.lease_ttl_s + settings.resend_after_s

    def enqueue(self, job_id: str, *, queue: str, resume: bool = False) -> None:
        """Send ``spartan.run_job(job_id)`` to ``queue``, task id ``task_id_for(job_id)``.

        Call it after the job row is committed; the message carries only the id.

        Args:
            resume: the job ran before: send it at ``PRIORITY_RESUME``, ahead of new jobs.
        """
        if not job_id:
            raise ValueError("job_id: must be a non-empty job id")
        if not queue:
            raise ValueError("queue: must be a non-empty queue name")
        priority = PRIORITY_RESUME if resume else PRIORITY_NEW
        self.app.send_task(
            TASK_NAME, args=[job_id], queue=queue, task_id=task_id_for(job_id), priority=priority
        )
        log.info("enqueued job %s on queue %s (priority %d)", job_id, queue, priority)

    def pending_jobs(self, queue: str) -> set[str] | None:
        """Job ids whose message ``queue`` holds: waiting (every priority), or delivered less
        than ``unacked_fresh_s`` ago and not acknowledged (Redis); waiting (SQLAlchemy
        transport, whose delivered messages stay invisible for good). None for other
        transports."""
        with self.app.connection_for_write() as conn:
            kind = conn.transport.driver_type
            channel = conn.default_channel
            if kind == "redis":
                payloads = _redis_payloads(channel, queue, fresh_s=self.unacked_fresh_s)
            elif kind == "sql":
                payloads = _sql_payloads(channel, queue)
            else:
                return None
        return {job_id for raw in payloads if (job_id := _job_of(raw)) is not None}

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


def _redis_payloads(channel: Any, queue: str, *, fresh_s: float) -> list[Any]:
    client = channel.client
    raw: list[Any] = []
    for pri in channel.priority_steps:
        raw += client.lrange(channel._q_for_pri(queue, pri), 0, -1)
    tags = client.zrangebyscore(channel.unacked_index_key, time.time() - fresh_s, "+inf")
    if tags:
        for entry in client.hmget(channel.unacked_key, tags):
            if entry is not None:
                message, _exchange, routing_key = json.loads(entry)
                if routing_key == queue:
                    raw.append(message)
    return raw


def _sql_payloads(channel: Any, queue: str) -> list[Any]:
    messages = channel._query_all(queue).filter(channel.message_cls.visible.is_(True))
    payloads = [m.payload for m in messages]
    channel.session.commit()
    return payloads


def _job_of(raw: Any) -> str | None:
    """The job id of one broker message of ``TASK_NAME`` (JSON text or parsed), else None."""
    try:
        message = json.loads(raw) if isinstance(raw, str | bytes) else raw
        headers = message.get("headers") or {}
    except (ValueError, AttributeError):
        return None
    task_id = headers.get("id") or ""
    if headers.get("task") != TASK_NAME or not task_id.startswith(TASK_ID_PREFIX):
        return None
    return task_id[len(TASK_ID_PREFIX) :]


def send_job(job: Job, *, store: JobStore, broker: Broker, settings: Settings) -> str:
    """Send ``job``'s message on the queue its spec names, then record when; returns the queue.

    The one way a job reaches the broker: submission, preemption and reclaiming call it after
    putting the job in the store as ``queued``. A job that ran before goes ahead of new ones.

    Raises:
        one of ``BROKER_DOWN`` when the broker is unreachable (the job is then not marked).
    """
    queue = queue_name(job.spec, settings)
    broker.enqueue(job.id, queue=queue, resume=job.started_at is not None)
    store.mark_enqueued(job_id=job.id)
    return queue


def resend_lost(
    *, store: JobStore, broker: Broker, settings: Settings, now: datetime | None = None
) -> list[str]:
    """Send again the queued jobs whose message the broker does not hold; returns their ids.

    Looks at queued jobs never sent (the broker was down at submission) or last sent (or seen
    in the broker) more than ``resend_after_s`` ago. Those the broker holds are
    marked seen; the others are re-sent (a conditional update first, so of several
    reconcilers only one sends). A broker that cannot tell (``pending_jobs`` is None) gets
    them all again: a duplicate is harmless, the worker claims each job once.

    Raises:
        one of ``BROKER_DOWN`` when the broker is unreachable.
    """
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(seconds=settings.resend_after_s)
    by_queue: dict[str, list[Job]] = defaultdict(list)
    for job in store.stale_queued(older_than=cutoff):
        by_queue[queue_name(job.spec, settings)].append(job)
    sent = []
    for queue, jobs in by_queue.items():
        pending = broker.pending_jobs(queue)
        held = [job.id for job in jobs if pending is not None and job.id in pending]
        store.mark_seen(job_ids=held)
        for job in jobs:
            if job.id in held or not store.claim_resend(job_id=job.id, older_than=cutoff):
                continue
            try:
                broker.enqueue(job.id, queue=queue, resume=job.started_at is not None)
            except BROKER_DOWN:
                store.restore_enqueued(job_id=job.id, at=job.enqueued_at)  # retry next round
                raise
            sent.append(job.id)
    if sent:
        log.warning(
            "re-sent %d queued job(s) the broker did not hold: %s", len(sent), ", ".join(sent)
        )
    return sent

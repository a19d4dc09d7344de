"""The API's view of the task queue: enqueue a job id, check the broker, stop a task.

A small protocol so routes never touch Celery directly; ``CeleryBroker`` is the real one. It
builds its Celery app from ``worker.celery_app.celery_config`` for the app's own settings (so
an app created with explicit settings talks to that broker) and sends the worker's task name
with the job id as the only argument, exactly as ``worker.celery_app.enqueue_job`` does.
"""

from __future__ import annotations

import logging
from typing import Protocol

from celery import Celery

from spartan.settings import Settings

log = logging.getLogger(__name__)


class Broker(Protocol):
    """What the API needs from the task queue."""

    def enqueue(self, job_id: str, *, queue: str) -> None:
        """Send the job's message (carrying only its id)."""
        ...

    def ping(self) -> None:
        """Raise if the broker cannot be reached."""
        ...

    def terminate(self, job_id: str) -> bool:
        """Hard-stop the task running ``job_id``; False if no worker reported it."""
        ...


class CeleryBroker:
    """Celery over the configured broker (Redis, or kombu's SQLAlchemy transport)."""

    def __init__(self, settings: Settings) -> None:
        from worker.celery_app import celery_config

        self.settings = settings
        self.app = Celery("spartan-api")
        self.app.conf.update(celery_config(settings))

    def enqueue(self, job_id: str, *, queue: str) -> None:
        from worker.celery_app import TASK_NAME

        result = self.app.send_task(TASK_NAME, args=[job_id], queue=queue)
        log.info("enqueued job %s on queue %s (task %s)", job_id, queue, result.id)

    def ping(self) -> None:
        with self.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=3)

    def terminate(self, job_id: str) -> bool:
        # Remote control needs a broadcast-capable transport (Redis, AMQP); kombu's SQLAlchemy
        # transport has none, and there the worker's own cooperative cancel is all there is.
        with self.app.connection_for_write() as conn:
            if not conn.transport.implements.exchange_type or "fanout" not in (
                conn.transport.implements.exchange_type
            ):
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

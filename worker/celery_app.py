"""The Celery application, configured once from ``Settings``, and the one way to enqueue a job.

Importing this module pulls in neither torch nor the training code: the API process calls
``enqueue_job`` and must stay light. The worker imports ``worker.tasks`` (the ``include`` list)
when it starts; the training code is imported inside the task, in the prefork child, so CUDA is
never initialised in the worker's parent process.

Settings chosen for long GPU jobs (the known ways Celery loses or duplicates them):

- ``task_acks_late`` + ``task_reject_on_worker_lost``: the message is acknowledged only when the
  task returns; a pool child killed mid-job (OOM, SIGKILL) puts the message back.
- ``worker_prefetch_multiplier=1`` and concurrency 1: a worker reserves one job at a time, so a
  second job never waits behind a week-long first one on the same machine.
- ``worker_max_tasks_per_child=1``: a fresh process per job (no leaked CUDA context or memory).
- ``visibility_timeout`` longer than the job time limit: Redis does not hand a running job's
  message to a second worker while the first still trains.
- The job store, not the broker, is the source of truth: the task carries only the job id,
  re-reads the job and is idempotent; ``worker.reclaim`` re-enqueues jobs whose worker died.

A Celery app works with ``celery -A worker.celery_app worker``: the module-level ``app`` is
built lazily on first access (no settings are read at import time).
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from celery import Celery

from spartan.settings import Settings, get_settings

log = logging.getLogger(__name__)

TASK_NAME = "spartan.run_job"
# Seconds of slack between the job time limit and the broker visibility timeout / hard limit.
_TIME_MARGIN_S = 3600


def _transport_options(settings: Settings) -> dict[str, Any]:
    """Broker options: a visibility timeout for brokers that redeliver unacked messages.

    kombu's SQLAlchemy transport passes its options to ``create_engine``, which rejects
    unknown keywords, and it has no visibility timeout to set.
    """
    if settings.broker_url.startswith("sqla+"):
        return {}
    return {"visibility_timeout": settings.job_time_limit_s + 2 * _TIME_MARGIN_S}


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration derived from ``settings`` (a plain dict, for inspection)."""
    return {
        "broker_url": settings.broker_url,
        "result_backend": settings.result_backend,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
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
        "result_expires": 7 * 24 * 3600,
        "broker_connection_retry_on_startup": True,
        "task_track_started": True,
    }


_APPS: dict[str, Celery] = {}
_APPS_LOCK = threading.Lock()


def get_celery_app(settings: Settings | None = None) -> Celery:
    """The Celery app for ``settings`` (default: the process-wide settings).

    One app per distinct configuration, built on first request and then reused, so changed
    settings (tests point ``SPARTAN_BROKER_URL`` elsewhere) give a fresh app.
    """
    settings = settings if settings is not None else get_settings()
    config = celery_config(settings)
    key = json.dumps(config, sort_keys=True, default=str)
    with _APPS_LOCK:
        app = _APPS.get(key)
        if app is None:
            app = Celery("spartan", include=["worker.tasks"], set_as_current=False)
            app.conf.update(config)
            _APPS[key] = app
        return app


def task_id_for(job_id: str) -> str:
    """The Celery task id of every message for ``job_id`` (so the API can revoke it)."""
    return f"run-{job_id}"


def enqueue_job(job_id: str, *, queue: str = "default", app: Celery | None = None) -> None:
    """Send the ``spartan.run_job`` message for ``job_id`` to ``queue``.

    Call it after the job row is committed; the message carries only the id. Every message of
    a job has the task id ``task_id_for(job_id)``.
    """
    if not job_id:
        raise ValueError("job_id: must be a non-empty job id")
    if not queue:
        raise ValueError("queue: must be a non-empty queue name")
    app = app if app is not None else get_celery_app()
    app.send_task(TASK_NAME, args=[job_id], queue=queue, task_id=task_id_for(job_id))
    log.info("enqueued job %s on queue %s", job_id, queue)


def __getattr__(name: str) -> Any:
    # ``celery -A worker.celery_app`` looks up ``app``; build it on first access.
    if name == "app":
        return get_celery_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""The Celery task ``spartan.run_job`` and the worker process's lifecycle.

The task is thin: a job id in, ``runtime.jobs.execute_job`` does the rest (re-reads the job,
trains, records the outcome in the store). The worker's parent process imports this module to
register the task and must never import torch or initialise CUDA: the job runtime is loaded
in the task, that is in the prefork child that runs the job (a fresh one per job).
"""

from __future__ import annotations

import os
import signal
import socket
from contextlib import suppress
from typing import Any

from celery import shared_task
from celery.signals import worker_process_init, worker_ready, worker_shutting_down

from spartan.queue import TASK_NAME, CeleryBroker
from spartan.settings import get_settings
from spartan.store import get_store
from worker.reclaim import Reclaimer


@shared_task(name=TASK_NAME, bind=True)
def run_job(self: Any, job_id: str) -> str:
    """Run the job ``job_id`` (the message carries nothing else); returns the outcome."""
    # Deferred to the pool child: the job runtime imports torch (see the module docstring).
    from runtime.jobs import execute_job

    node = self.request.hostname or socket.gethostname()
    return execute_job(job_id, worker=f"{node}/{os.getpid()}")


# worker process lifecycle -----------------------------------------------------------------
_reclaimer: Reclaimer | None = None
_pool: Any = None


@worker_ready.connect
def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    """In the worker's parent: start the reclaimer thread and remember the pool."""
    global _reclaimer, _pool
    _pool = getattr(sender, "pool", None)
    settings = get_settings()
    _reclaimer = Reclaimer(
        store=get_store(settings.database_url),
        broker=CeleryBroker(settings),
        settings=settings,
        interval_s=settings.reconcile_interval_s,
    )
    _reclaimer.start()


@worker_shutting_down.connect
def _on_worker_shutting_down(**_: Any) -> None:
    """In the parent, on shutdown: ask running jobs to checkpoint and re-queue (SIGTERM)."""
    if _reclaimer is not None:
        _reclaimer.stop()
    info = getattr(_pool, "info", None) or {}
    for pid in info.get("processes", []):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


@worker_process_init.connect
def _on_worker_process_init(**_: Any) -> None:
    """In each fresh pool child: drop database connections inherited from the parent."""
    get_store(get_settings().database_url).engine.dispose(close=False)

"""The worker's Celery app: ``celery -A worker.celery_app worker``.

Built from ``spartan.queue.celery_config`` (the configuration the senders use too) with the
task module ``worker.tasks`` included. The module-level ``app`` is built lazily on first
access, so importing this module reads no settings.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from spartan.queue import celery_app
from spartan.settings import Settings, get_settings

TASK_MODULES = ("worker.tasks",)


def get_celery_app(settings: Settings | None = None) -> Celery:
    """The worker's Celery app for ``settings`` (default: the process-wide settings)."""
    return celery_app(settings if settings is not None else get_settings(), include=TASK_MODULES)


def __getattr__(name: str) -> Any:
    # ``celery -A worker.celery_app`` looks up ``app``; build it on first access.
    if name == "app":
        return get_celery_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

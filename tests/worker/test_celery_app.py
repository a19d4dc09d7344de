"""Celery configuration for long GPU jobs, and a parent process that never imports torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from spartan.queue import TASK_NAME, celery_config, task_id_for
from spartan.settings import Settings
from worker.celery_app import get_celery_app

REPO = Path(__file__).resolve().parents[2]


def test_config_for_long_jobs(settings: Settings) -> None:
    conf = get_celery_app(settings).conf
    assert conf.broker_url == settings.broker_url
    assert not conf.result_backend  # the job store records outcomes, not Celery
    assert conf.task_ignore_result is True
    assert "worker.tasks" in conf.include
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.worker_max_tasks_per_child == 1
    assert conf.worker_concurrency == 1
    # kombu's SQLAlchemy transport has no visibility timeout (and rejects the option)
    assert conf.broker_transport_options == {}
    redis = settings.model_copy(update={"broker_url": "redis://127.0.0.1:6379/9"})
    options = get_celery_app(redis).conf.broker_transport_options
    assert options["visibility_timeout"] > redis.job_time_limit_s
    assert conf.task_time_limit > settings.job_time_limit_s
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    assert conf.task_routes[TASK_NAME] == {"queue": settings.default_queue}
    # task events on (``-E``), so Flower sees the jobs' tasks
    assert conf.worker_send_task_events is True and conf.task_send_sent_event is True


def test_one_app_per_configuration(settings: Settings) -> None:
    assert get_celery_app(settings) is get_celery_app(settings)
    other = settings.model_copy(update={"broker_url": "redis://127.0.0.1:6379/9"})
    assert get_celery_app(other) is not get_celery_app(settings)
    assert celery_config(other)["broker_url"] == "redis://127.0.0.1:6379/9"
    assert task_id_for("job_1") == task_id_for("job_1") != task_id_for("job_2")


def test_parent_process_imports_no_torch() -> None:
    code = (
        "import sys; import worker.celery_app as c, worker.tasks, worker.reclaim, cli.main; "
        "app = c.app; assert app.tasks['spartan.run_job'].name == 'spartan.run_job'; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

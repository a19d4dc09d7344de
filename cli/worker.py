"""The ``spartan worker`` sub-command: a real Celery worker for the job queues.

One job at a time, each in a fresh child process (``worker.celery_app``); this process becomes
the worker's parent, which never imports torch.
"""

from __future__ import annotations

import sys
from typing import Annotated
from urllib.parse import urlsplit, urlunsplit

import typer
from rich.console import Console

from spartan.settings import get_settings
from worker.celery_app import get_celery_app

console = Console(stderr=True)


def worker(
    queue: Annotated[
        list[str] | None,
        typer.Option("--queue", "-Q", help="queue to consume (repeat or comma-separate)"),
    ] = None,
    concurrency: Annotated[
        int, typer.Option(min=1, help="jobs at once (1 per GPU; each in a fresh process)")
    ] = 1,
    loglevel: Annotated[str, typer.Option(help="Celery log level")] = "info",
    hostname: Annotated[str | None, typer.Option(help="Celery node name")] = None,
) -> None:
    """Start a Celery worker that runs training jobs."""
    settings = get_settings()
    settings.ensure_dirs()
    queues = [q for item in (queue or [settings.default_queue]) for q in item.split(",") if q]
    argv = [
        "worker",
        "--pool=prefork",
        f"--concurrency={concurrency}",
        f"--queues={','.join(queues)}",
        f"--loglevel={loglevel}",
    ]
    if hostname:
        argv.append(f"--hostname={hostname}")
    console.print(f"worker on queues {queues}, broker {redact(settings.broker_url)}")
    sys.stdout.flush()
    get_celery_app(settings).worker_main(argv)


def redact(url: str) -> str:
    """A URL without its password."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def register(app: typer.Typer) -> None:
    """Add ``worker`` to the ``spartan`` command."""
    app.command()(worker)

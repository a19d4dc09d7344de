"""Running the service on one machine: API + worker processes, and the demo run.

``run_service`` is ``spartan serve``: uvicorn in this process and one Celery worker as a child
process, both reading the same settings (embedded default: SQLite store, local artifacts and
kombu's SQLAlchemy transport under ``SPARTAN_HOME``; set ``SPARTAN_BROKER_URL`` and
``SPARTAN_DATABASE_URL`` for Redis and PostgreSQL). ``run_demo`` is ``spartan demo``: it starts
that service on a free port, submits ``examples/quickstart.yaml``, shows progress, prints the
results and shuts everything down.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import uvicorn
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from spartan.client import SpartanAPIError, SpartanClient
from spartan.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger(__name__)

# The example job specs ship inside the package (``spartan/examples`` is package data; in the
# repository it links to ``examples/``), so ``spartan demo`` works from an installed wheel.
EXAMPLES = Path(str(resources.files("spartan") / "examples"))
QUICKSTART = EXAMPLES / "quickstart.yaml"


def worker_command(settings: Settings) -> list[str]:
    """The command line of one embedded worker process (``spartan worker`` on the queue)."""
    return [sys.executable, "-m", "cli", "worker", "--queue", settings.default_queue]


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment for child processes: ours, with the resolved home pinned."""
    env = dict(os.environ)
    env["SPARTAN_HOME"] = str(settings.home)
    env.update(extra)
    return env


def _die_with_parent() -> None:
    # Linux: SIGTERM the child when the process that started it dies, even by SIGKILL.
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def start_worker(settings: Settings) -> subprocess.Popen[bytes]:
    """Start one worker process (its own process group, so it can be stopped as a whole)."""
    cmd = worker_command(settings)
    log.info("starting worker: %s", " ".join(cmd))
    return subprocess.Popen(
        cmd, env=child_env(settings), start_new_session=True, preexec_fn=_die_with_parent
    )


def stop_process(proc: subprocess.Popen[bytes], *, timeout: float = 20.0) -> None:
    """SIGTERM the process group (a warm shutdown for Celery), SIGKILL after ``timeout``."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def run_service(
    settings: Settings, *, host: str, port: int, worker: bool = True, access_log: bool = False
) -> None:
    """``spartan serve``: the API (uvicorn, in this process) and a worker child process.

    uvicorn's access log (one line per request) is off unless ``access_log``: at a thousand
    polls a second, writing it costs more than answering them. HTTP is parsed by httptools
    (a dependency; h11 otherwise) on asyncio's own loop: uvloop, when installed, answered
    slightly more requests but left a few connections waiting a second or more under load
    (p99 about 1 s against 0.15 s at 100 connections; ``benchmarks/polls.py``). The app is
    ``serving_app``'s.
    """
    settings.ensure_dirs()
    # uvicorn shuts down on SIGTERM/SIGINT and then re-raises the signal with the previous
    # handler in place; make that an exception so the worker is stopped below.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    proc = start_worker(settings) if worker else None
    try:
        uvicorn.run(
            "cli.serve:serving_app",
            factory=True,
            host=host,
            port=port,
            log_level="info",
            access_log=access_log,
            loop="asyncio",
        )
    finally:
        if proc is not None:
            stop_process(proc)


def serving_app() -> FastAPI:
    """``create_app()`` as a long-lived server runs it, with the garbage collector tuned.

    The start-up objects (modules, the app, settings, the store) are frozen out of the
    collector's scans, and the first generation collects after 100,000 allocations instead of
    700: a poll allocates a few hundred short-lived objects, so the default threshold ran a
    collection every few polls, and its pauses were the p99 tail (``benchmarks/polls.py``,
    quiet machine: p99 57-111 ms before, 44-49 ms after, at 100 connections).
    """
    from api.main import create_app

    app = create_app()
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)
    return app


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def local_service(
    settings: Settings, *, port: int | None = None, log_path: Path | None = None
) -> Iterator[str]:
    """Run ``spartan serve`` as a child process until the block ends; yields its URL.

    Its output (API and worker logs) goes to ``log_path`` when given.
    """
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with open(log_path, "ab") if log_path else contextlib.nullcontext() as log_file:
        proc = subprocess.Popen(
            cmd,
            env=child_env(settings),
            start_new_session=True,
            stdout=log_file,
            stderr=subprocess.STDOUT if log_file else None,
        )
        try:
            wait_ready(url, proc=proc)
            yield url
        finally:
            stop_process(proc, timeout=30)


def wait_ready(
    url: str, *, proc: subprocess.Popen[bytes] | None = None, timeout: float = 120
) -> None:
    """Poll ``/readyz`` until the service answers ready.

    Raises:
        RuntimeError: if the process exits or the service is not ready within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    with SpartanClient(url, timeout=5) as client:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the service exited with code {proc.returncode}")
            try:
                client.ready()
                return
            except (SpartanAPIError, httpx.TransportError) as exc:
                log.debug("not ready yet: %s", exc)
            time.sleep(0.5)
    raise RuntimeError(f"{url} was not ready after {timeout:.0f} s")


def follow(client: SpartanClient, job_id: str, *, console: Console | None = None) -> dict[str, Any]:
    """Show a live progress bar from the job's events; returns the finished job."""
    console = console or Console()
    columns = (
        TextColumn("[bold]{task.fields[status]:<9}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("steps"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    )
    final: dict[str, Any] | None = None
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(job_id, total=None, status="queued", info="")
        for event in client.events(job_id):
            if event.event == "end":
                final = event.data
                progress = final.get("progress") or {}
                bar.update(task, status=final["status"], info=describe_progress(progress))
                if final["status"] == "succeeded" and bar.tasks[0].total:
                    bar.update(task, completed=bar.tasks[0].total)
                break
            if event.event != "progress":
                continue  # epoch records: the bar shows steps
            progress = event.data.get("progress") or {}
            total = progress.get("total_steps")
            bar.update(
                task,
                status=event.data.get("status", ""),
                completed=progress.get("step", 0),
                total=total if total else None,
                info=describe_progress(progress),
            )
    return final if final is not None else client.job(job_id)


def describe_progress(progress: dict[str, Any]) -> str:
    """A one-line summary of a job's progress dict."""
    parts = []
    if "epoch" in progress:
        parts.append(f"epoch {progress['epoch']}")
    for key, label, fmt in (
        ("loss", "loss", "{:.3f}"),
        ("accuracy", "acc", "{:.1%}"),
        ("sparsity", "sparsity", "{:.1%}"),
        ("cost_fraction", "cost", "{:.3f}"),
        ("eta_s", "eta", "{:.0f}s"),
    ):
        value = progress.get(key)
        if isinstance(value, int | float):
            parts.append(f"{label} {fmt.format(value)}")
    return "  ".join(parts)


def summarize(client: SpartanClient, job: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Accuracy, sparsity, cost fraction and artifact location of a finished job."""
    summary: dict[str, Any] = {"id": job["id"], "status": job["status"], "error": job.get("error")}
    names = {a["name"] for a in client.artifacts(job["id"])["data"]}
    if "metrics.json" in names:
        metrics = client.artifact_json(job["id"], "metrics.json")
        summary["dense_top1"] = (metrics.get("dense") or {}).get("top1")
        summary["top1"] = (metrics.get("final") or {}).get("top1")
    if "cost_report.json" in names:
        totals = client.artifact_json(job["id"], "cost_report.json").get("totals", {})
        summary["sparsity"] = totals.get("sparsity")
        summary["cost_fraction"] = totals.get("cost_fraction")
    assert settings.artifact_dir is not None
    summary["artifacts"] = str(settings.artifact_dir / job["id"])
    summary["artifact_names"] = sorted(names)
    return summary


def print_summary(summary: dict[str, Any], console: Console) -> None:
    """Print ``summarize``'s answer for a person."""

    def pct(value: Any) -> str:
        return f"{value:.2%}" if isinstance(value, int | float) else "n/a"

    console.print(f"job {summary['id']}: [bold]{summary['status']}[/bold]")
    if summary.get("error"):
        console.print(f"  error: {summary['error']}")
    console.print(
        f"  accuracy (top-1): {pct(summary.get('top1'))}"
        f"   (dense at start: {pct(summary.get('dense_top1'))})"
    )
    console.print(f"  achieved sparsity: {pct(summary.get('sparsity'))}")
    cost = summary.get("cost_fraction")
    console.print(
        f"  cost fraction: {cost:.4f}" if isinstance(cost, int | float) else "  cost fraction: n/a"
    )
    console.print(f"  artifacts: {summary['artifacts']}  ({', '.join(summary['artifact_names'])})")


def run_demo(
    settings: Settings, *, spec_path: Path = QUICKSTART, console: Console | None = None
) -> int:
    """``spartan demo``: serve, submit the quickstart job, follow it, print results, stop.

    Returns the exit code (0 when the job succeeded).
    """
    console = console or Console()
    spec = yaml.safe_load(spec_path.read_text())
    settings.ensure_dirs()
    log_path = settings.home / "demo.log"
    console.print(f"spartan demo: state under {settings.home}, service logs in {log_path}")
    with local_service(settings, log_path=log_path) as url:
        console.print(f"service ready at {url}; submitting {spec_path.name}")
        with SpartanClient(url) as client:
            job = client.submit(spec)
            console.print(f"job {job['id']} {job['status']}")
            final = follow(client, job["id"], console=console)
            summary = summarize(client, final, settings)
        print_summary(summary, console)
    console.print("service stopped")
    return 0 if summary["status"] == "succeeded" else 1

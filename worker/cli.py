"""The ``spartan train`` and ``spartan worker`` sub-commands (``spartan.cli`` registers them).

``spartan train SPEC.yaml --out DIR`` runs one job specification locally, without the service:
the same training loop as the worker, a progress bar, checkpoints in ``DIR/checkpoint.pt``
(running the same command again resumes; Ctrl-C checkpoints and stops), artifacts in ``DIR``.
For local runs, paths in the spec may also lie under the current folder or the spec's folder,
besides the configured data roots.

``spartan export ARTIFACT_DIR --out DIR`` deploys a job's artifact folder on this machine
(``worker.export``): ``model.sparse.safetensors``, ``deploy.json`` and ``model.onnx``.

``spartan worker`` starts a real Celery worker for the job queues: one job at a time, each in
a fresh child process.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.console import Console

console = Console(stderr=True)


def load_spec_file(path: Path) -> Any:
    """Parse a YAML (or JSON) job specification file into a ``JobSpec``.

    Raises:
        ValueError: for unreadable files or invalid specifications, naming the fields.
    """
    import yaml
    from pydantic import ValidationError

    from spartan.spec import JobSpec

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read the job specification: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a job specification is a mapping, got {type(data).__name__}")
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "spec"
            lines.append(f"{where}: {err['msg']}")
        raise ValueError("\n".join(lines)) from None


def train(
    spec_file: Annotated[Path, typer.Argument(help="job specification (YAML)", exists=True)],
    out: Annotated[Path, typer.Option("--out", help="folder for artifacts and the checkpoint")],
) -> None:
    """Train one job specification locally and write its artifacts into --out."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from spartan.settings import get_settings
    from worker.validation import validate_spec

    settings = get_settings()
    roots = [*settings.data_roots, Path.cwd(), spec_file.resolve().parent]
    settings = settings.model_copy(update={"data_roots": roots, "progress_interval_s": 0.5})
    try:
        spec = load_spec_file(spec_file)
        validate_spec(spec, settings)
    except ValueError as exc:
        console.print(f"[red]invalid job specification[/red]\n{exc}")
        raise typer.Exit(code=2) from None

    from worker.training import TrainHooks, run_training

    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / "checkpoint.pt"
    if checkpoint.exists():
        console.print(f"resuming from {checkpoint}")
    interrupted = False

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        nonlocal interrupted
        interrupted = True

    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        TextColumn("eta {task.fields[eta]}"),
    ]
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("preparing", total=None, stats="", eta="?")

        def on_progress(p: dict[str, Any]) -> None:
            stats = []
            for key, fmt in (("loss", "loss {:.3f}"), ("accuracy", "acc {:.1%}")):
                if p.get(key) is not None:
                    stats.append(fmt.format(p[key]))
            if p.get("sparsity") is not None:
                stats.append(f"sparsity {p['sparsity']:.1%}")
            if p.get("beta") is not None:
                stats.append(f"beta {p['beta']:.3g}")
            eta = p.get("eta_s")
            bar.update(
                task,
                description=p.get("phase", ""),
                total=p.get("total_steps"),
                completed=p.get("step", 0),
                stats="  ".join(stats),
                eta="?" if eta is None else f"{eta:.0f}s",
            )

        previous = signal.signal(signal.SIGINT, on_sigint)
        try:
            result = run_training(
                spec,
                out_dir=out,
                checkpoint_path=checkpoint,
                settings=settings,
                hooks=TrainHooks(
                    progress=on_progress, stop=lambda: "preempt" if interrupted else None
                ),
            )
        finally:
            signal.signal(signal.SIGINT, previous)
    if result.status != "succeeded":
        console.print(f"interrupted; checkpoint in {checkpoint}; run the same command to resume")
        raise typer.Exit(code=130)
    metrics = result.metrics or {}
    dense, final = metrics.get("dense") or {}, metrics.get("final") or {}
    console.print(
        f"dense top-1 {dense.get('top1', 0):.2%}  ->  sparse top-1 {final.get('top1', 0):.2%} "
        f"at sparsity {final.get('sparsity', 0):.2%} (kept cost fraction "
        f"{final.get('cost_fraction', 0):.4f}) in {metrics.get('train_time_s', 0):.0f} s"
    )
    console.print(f"artifacts in {out}")


def export(
    artifact_dir: Annotated[
        Path, typer.Argument(help="a job's artifact folder (model.safetensors, spec.json)")
    ],
    out: Annotated[Path, typer.Option("--out", help="folder for the exported files")],
    device: Annotated[
        str, typer.Option(help="where to deploy and measure: auto, cpu, cuda, cuda:1, ...")
    ] = "auto",
    batch_size: Annotated[int, typer.Option(help="samples in the measured input")] = 1,
) -> None:
    """Deploy a job's artifacts on this machine: sparse safetensors, deploy.json, ONNX."""
    from rich.table import Table

    from worker import artifacts as art
    from worker.export import DEPLOY_REPORT, ONNX_MODEL, export_artifacts

    out_console = Console()
    try:
        with console.status(f"deploying {artifact_dir} and exporting to ONNX"):
            result = export_artifacts(artifact_dir, out, device=device, batch_size=batch_size)
    except ValueError as exc:
        console.print(f"[red]cannot export[/red]\n{exc}")
        raise typer.Exit(code=2) from None
    except RuntimeError as exc:
        console.print(f"[red]export failed[/red]\n{exc}")
        raise typer.Exit(code=1) from None
    report = result.deploy_report
    totals = report["totals"]
    kernels = ", ".join(f"{k} x{n}" for k, n in sorted(totals["kernels"].items()))
    sizes = {name: path.stat().st_size for name, path in result.files.items()}
    notes = {
        art.SPARSE_MODEL: f"{sizes[art.SPARSE_MODEL] / result.dense_bytes:.3f}x the size of "
        f"{art.MODEL} ({result.dense_bytes / 1e6:.2f} MB)",
        DEPLOY_REPORT: f"{len(report['layers'])} layers: {kernels}",
        ONNX_MODEL: f"onnxruntime matches torch (max |diff| {result.onnx_max_abs_diff:.1e})",
    }
    table = Table(title=f"exported to {out}")
    for column, justify in (("file", "left"), ("size", "right"), ("", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for name in result.files:
        table.add_row(name, f"{sizes[name] / 1e6:.2f} MB", notes[name])
    out_console.print(table)
    speedup = totals["speedup"]
    out_console.print(
        f"deployed on {report['device']} at batch {report['batch_size']}: "
        f"{totals['dense_ms']:.3f} ms dense -> {totals['deployed_ms']:.3f} ms deployed "
        f"({'n/a' if speedup is None else f'{speedup:.2f}x'})"
    )


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
    from spartan.settings import get_settings
    from worker.celery_app import get_celery_app

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
    console.print(f"worker on queues {queues}, broker {_redact(settings.broker_url)}")
    sys.stdout.flush()
    get_celery_app(settings).worker_main(argv)


def _redact(url: str) -> str:
    """A URL without its password."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def register(app: typer.Typer) -> None:
    """Add ``train``, ``export`` and ``worker`` to the ``spartan`` command."""
    app.command()(train)
    app.command()(export)
    app.command()(worker)

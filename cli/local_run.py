"""Local runs on this machine, no service: the work behind ``spartan train`` and ``export``.

This module imports the job runtime (torch); ``cli.local`` loads it only when one of those
commands runs.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from types import FrameType
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from runtime import artifacts as art
from runtime.export import DEPLOY_REPORT, ONNX_MODEL, export_artifacts
from runtime.plots import write_plots
from runtime.training import TrainHooks, TrainResult, run_training
from runtime.validation import validate_spec
from spartan.series import TRAINING_PHASE
from spartan.settings import Settings
from spartan.spec import JobSpec, load_spec_file


def train_locally(
    spec_file: Path,
    out: Path,
    settings: Settings,
    console: Console,
    *,
    devices: int | None = None,
) -> None:
    """Validate, train with a progress bar (Ctrl-C checkpoints), print the outcome.

    Args:
        devices: overrides the spec's ``resources.devices``.

    Raises:
        typer.Exit: 2 for an invalid spec, 130 when interrupted.
    """
    try:
        spec = load_spec_file(spec_file)
        if devices is not None:
            spec = with_devices(spec, devices)
        validate_spec(spec, settings)
    except ValueError as exc:
        console.print(f"[red]invalid job specification[/red]\n{exc}")
        raise typer.Exit(code=2) from None
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / "checkpoint.pt"
    if checkpoint.exists():
        console.print(f"resuming from {checkpoint}")
    points: list[dict[str, Any]] = []  # this run's training reports, for curves.png
    result = _train_with_progress(spec, out, checkpoint, settings, console, points=points)
    if result.status != "succeeded":
        console.print(f"interrupted; checkpoint in {checkpoint}; run the same command to resume")
        raise typer.Exit(code=130)
    metrics = result.metrics or {}
    report = out / art.COST_REPORT_JSON
    write_plots(
        out,
        points=points,
        epochs=metrics.get("history") or [],
        cost_report=json.loads(report.read_text()) if report.is_file() else None,
    )
    dense, final = metrics.get("dense") or {}, metrics.get("final") or {}
    console.print(
        f"dense top-1 {dense.get('top1', 0):.2%}  ->  sparse top-1 {final.get('top1', 0):.2%} "
        f"at sparsity {final.get('sparsity', 0):.2%} (kept cost fraction "
        f"{final.get('cost_fraction', 0):.4f}) in {metrics.get('train_time_s', 0):.0f} s"
    )
    hashes = metrics.get("mask_sha256") or []
    if len(hashes) > 1:
        console.print(
            f"trained on {len(hashes)} devices; the masks were identical on every rank "
            f"(sha256 {hashes[0][:16]}..)"
        )
    console.print(f"artifacts in {out}")


def with_devices(spec: JobSpec, devices: int) -> JobSpec:
    """``spec`` with ``resources.devices`` set to ``devices`` (validated again).

    Raises:
        ValueError: one ``field.path: reason`` line per problem.
    """
    body = spec.model_dump(mode="json")
    body["resources"]["devices"] = devices
    try:
        return JobSpec.model_validate(body)
    except ValidationError as exc:
        raise ValueError(
            "\n".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        ) from None


def _train_with_progress(
    spec: JobSpec,
    out: Path,
    checkpoint: Path,
    settings: Settings,
    console: Console,
    *,
    points: list[dict[str, Any]],
) -> TrainResult:
    """``run_training`` under a progress bar; SIGINT asks it to checkpoint and stop. The
    training reports are appended to ``points``."""
    interrupted = False

    def on_progress(p: dict[str, Any]) -> None:
        _show_progress(bar, task, p)
        if p.get("phase") == TRAINING_PHASE:
            points.append(p)

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
        previous = signal.signal(signal.SIGINT, on_sigint)
        try:
            return run_training(
                spec,
                out_dir=out,
                checkpoint_path=checkpoint,
                settings=settings,
                hooks=TrainHooks(
                    progress=on_progress,
                    stop=lambda: "preempt" if interrupted else None,
                ),
            )
        finally:
            signal.signal(signal.SIGINT, previous)


def _show_progress(bar: Progress, task: TaskID, p: dict[str, Any]) -> None:
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


def export_locally(
    artifact_dir: Path, out: Path, *, device: str, batch_size: int, console: Console
) -> None:
    """Deploy an artifact folder here and print what was written.

    Raises:
        typer.Exit: 2 for a bad folder or option, 1 when the export itself fails.
    """
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

"""The ``spartan train`` and ``spartan export`` sub-commands (``cli.main`` registers them).

``spartan train SPEC.yaml --out DIR`` runs one job specification locally, without the service:
the same training loop as the worker, a progress bar, checkpoints in ``DIR/checkpoint.pt``
(running the same command again resumes; Ctrl-C checkpoints and stops), artifacts in ``DIR``.
For local runs, paths in the spec may also lie under the current folder or the spec's folder,
besides the configured data roots. ``--devices N`` runs it on N devices of this machine
(``resources.devices``: N GPUs, or N processes on CPU; ``runtime.training.distributed``).

``spartan export ARTIFACT_DIR --out DIR`` deploys a job's artifact folder on this machine
(``runtime.export``): ``model.sparse.safetensors``, ``deploy.json`` and ``model.onnx``.

The work is in ``cli.local_run``, which imports torch; it is loaded when one of these commands
runs, so every other command (``spartan serve`` among them: its process is the API's) starts
without torch.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Annotated

import typer
from rich.console import Console

from spartan.settings import get_settings
from spartan.spec import MAX_DEVICES

console = Console(stderr=True)


def _local_run() -> ModuleType:
    # Deferred on purpose: see the module docstring.
    from cli import local_run

    return local_run


def train(
    spec_file: Annotated[Path, typer.Argument(help="job specification (YAML)", exists=True)],
    out: Annotated[Path, typer.Option("--out", help="folder for artifacts and the checkpoint")],
    devices: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=MAX_DEVICES,
            help="train on this many devices of this machine (GPUs, or processes on CPU); "
            "overrides resources.devices",
        ),
    ] = None,
) -> None:
    """Train one job specification locally and write its artifacts into --out."""
    settings = get_settings()
    roots = [*settings.data_roots, Path.cwd(), spec_file.resolve().parent]
    settings = settings.model_copy(update={"data_roots": roots, "progress_interval_s": 0.5})
    _local_run().train_locally(spec_file, out, settings, console, devices=devices)


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
    _local_run().export_locally(
        artifact_dir, out, device=device, batch_size=batch_size, console=console
    )


def register(app: typer.Typer) -> None:
    """Add ``train`` and ``export`` to the ``spartan`` command."""
    app.command()(train)
    app.command()(export)

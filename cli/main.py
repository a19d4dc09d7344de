"""The ``spartan`` command: one entry point for the service, the worker and local runs.

The top layer: it wires the service commands (``cli.service``: serve, demo, submit, status,
cancel, download, upload, plan, jobs, apikey, db), sweeps (``cli.sweeps``: sweep,
sweep-status, sweep-cancel, sweeps), the worker (``cli.worker``) and local runs (``cli.local``:
train, export). Each sub-command parses its arguments and calls a plain function elsewhere.
``main`` is the installed ``spartan``: errors a person can fix (the service unreachable, an
error answer, a bad setting) end in one line naming the fix (``cli.errors``), not a traceback.
"""

from __future__ import annotations

import sys
from importlib.metadata import version as installed_version
from typing import Annotated

import typer
from rich.console import Console

from cli import errors, local, service, sweeps, worker

app = typer.Typer(
    help="Train neural networks to a sparsity or hardware-cost budget.", no_args_is_help=True
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"spartan {installed_version('spartan')}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
) -> None:
    """Train neural networks to a sparsity or hardware-cost budget."""


@app.command()
def version() -> None:
    """Print the installed version."""
    typer.echo(installed_version("spartan"))


service.register(app)
sweeps.register(app)
local.register(app)
worker.register(app)


def main() -> None:
    """Run the ``spartan`` command."""
    try:
        app()
    except Exception as exc:
        line = errors.explain(exc)
        if line is None:
            raise
        Console(stderr=True, highlight=False).print(line, markup=False, soft_wrap=True)
        sys.exit(errors.EXIT_CODE)

"""The ``spartan`` command: one entry point for the service, the worker and local runs.

The top layer: it wires the service commands (``cli.service``: serve, demo, submit, status,
cancel, download, plan, jobs, apikey), the worker (``cli.worker``) and local runs
(``cli.local``: train, export). Each sub-command parses its arguments and calls a plain
function elsewhere.
"""

from __future__ import annotations

from importlib.metadata import version as installed_version

import typer

from cli import local, service, worker

app = typer.Typer(
    help="Train neural networks to a sparsity or hardware-cost budget.", no_args_is_help=True
)


@app.command()
def version() -> None:
    """Print the installed version."""
    typer.echo(installed_version("spartan"))


service.register(app)
local.register(app)
worker.register(app)

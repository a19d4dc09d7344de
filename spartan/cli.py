"""The ``spartan`` command: one entry point for the service, the worker and local runs.

Each sub-command parses its arguments and calls a plain function elsewhere.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Train neural networks to a sparsity or hardware-cost budget.", no_args_is_help=True
)


@app.command()
def version() -> None:
    """Print the installed version."""
    from importlib.metadata import version as _version

    typer.echo(_version("spartan"))


def _register_service_commands() -> None:
    # serve, demo, submit, status, cancel, download, plan, jobs, apikey (spartan/service_cli.py)
    from spartan.service_cli import register

    register(app)


_register_service_commands()


def _register_worker_commands() -> None:
    # train, export, worker (worker/cli.py)
    from worker.cli import register

    register(app)


_register_worker_commands()

if __name__ == "__main__":
    app()

"""The ``spartan`` command line (``cli.main``): the layer that wires everything together.

``main`` is the installed ``spartan``. It needs the ``[service]`` extra; without it, it says so
in one line instead of a traceback.
"""

from __future__ import annotations

import sys

# Top-level modules of the [service] extra that the command imports.
SERVICE_MODULES = frozenset(
    {"typer", "rich", "click", "httpx", "pydantic", "pydantic_settings", "yaml", "sqlalchemy",
     "alembic", "celery", "kombu", "uvicorn", "fastapi", "starlette", "redis", "psycopg"}
)  # fmt: skip


def main() -> None:
    """Run the ``spartan`` command."""
    try:
        from cli.main import main as run
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in SERVICE_MODULES:
            raise
        sys.stderr.write(
            f"spartan: the command needs the service's packages ({exc.name} is missing): "
            "pip install 'spartan[service]'\n"
        )
        sys.exit(2)
    run()

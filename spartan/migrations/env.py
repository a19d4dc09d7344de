"""Alembic's environment: runs the revisions on the connection ``spartan.migrations`` passes,
or on ``SPARTAN_DATABASE_URL`` (the settings) when Alembic's own command line runs them."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from spartan.settings import get_settings
from spartan.store import Base

target_metadata = Base.metadata


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    with create_engine(get_settings().database_url).begin() as conn:
        _run(conn)

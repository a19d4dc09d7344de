"""Schema migrations of the job store (Alembic), run when a store is first opened.

``upgrade(engine)`` brings a database to the newest revision: it is what every process does on
start (``spartan.store.get_engine``) and what ``spartan db upgrade`` does by hand. A database
created before migrations existed (by ``create_all``: tables but no ``alembic_version``) is
stamped with the first revision, whose schema it has, and then upgraded like any other.

Revisions live in ``versions/`` (``0001_initial`` is the schema ``create_all`` made); write a
new one for every change to the tables of ``spartan.store``, for instance with
``alembic -c spartan/migrations/alembic.ini revision --autogenerate -m "what"``.
"""

from __future__ import annotations

import fcntl
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic itself (about 11 MB) is imported only when a database needs migrating: a process
# opening a database that is up to date reads alembic_version with one query.
log = logging.getLogger(__name__)

FOLDER = Path(__file__).resolve().parent
BASELINE = "0001"  # the schema of databases made by create_all, before migrations
LEGACY_TABLES = frozenset({"jobs", "uploads", "api_keys"})
PG_LOCK_KEY = 0x5350_4D49  # pg_advisory_lock key held while migrating ("SPMI")


def config(connection: Connection | None = None) -> Config:
    """An Alembic configuration for these revisions (no alembic.ini needed)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(FOLDER))
    cfg.attributes["connection"] = connection
    return cfg


@lru_cache(maxsize=1)
def head() -> str:
    """The newest revision: the one no other revision revises (read from ``versions/``
    without importing Alembic; ``tests/spartan/test_migrations.py`` checks it against
    Alembic's answer)."""
    revises: dict[str, str | None] = {}
    for path in (FOLDER / "versions").glob("[0-9]*.py"):
        source = path.read_text(encoding="utf-8")
        rev = re.search(r'^revision = "([^"]+)"', source, re.M)
        down = re.search(r'^down_revision = (?:"([^"]+)"|None)', source, re.M)
        assert rev is not None and down is not None, path
        revises[rev.group(1)] = down.group(1)
    [newest] = set(revises) - set(revises.values())
    return newest


def current(connection: Connection) -> str | None:
    """The revision the database is at (None: not under migrations yet)."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Bring the database to ``revision`` (default: the newest); returns the revision it is
    at afterwards. Safe to run from several processes at once (the API and its worker start
    together): one migrates while the others wait on a lock (PostgreSQL: an advisory lock;
    SQLite: a lock file beside the database), then find it done."""
    newest = head()
    with engine.connect() as conn:
        if revision == "head" and current(conn) == newest:
            return newest
    with _exclusive(engine):
        try:
            return _upgrade(engine, revision)
        except DBAPIError:
            with engine.connect() as conn:
                if current(conn) == newest:
                    return newest
            raise


@contextmanager
def _exclusive(engine: Engine) -> Iterator[None]:
    """Hold a lock that only one migrating process can hold at a time."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": PG_LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": PG_LOCK_KEY})
        return
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrate-lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _upgrade(engine: Engine, revision: str) -> str | None:
    with engine.begin() as conn:
        if current(conn) is None and set(inspect(conn).get_table_names()) >= LEGACY_TABLES:
            log.info("database made before migrations: stamping it at %s", BASELINE)
            from alembic import command

            command.stamp(config(conn), BASELINE)
    with engine.begin() as conn:
        if current(conn) != head() or revision != "head":
            from alembic import command

            command.upgrade(config(conn), revision)
        return current(conn)

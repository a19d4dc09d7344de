"""Schema migrations (``spartan.migrations``): a new database, one made by the old
``create_all`` before migrations existed, and the model matching the newest revision."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    inspect,
    text,
)
from sqlalchemy.exc import OperationalError
from typer.testing import CliRunner

from cli.main import app as cli_app
from spartan import migrations
from spartan.keys import create_api_key, owner_for_key
from spartan.store import Base, JobStore, get_engine


def _legacy_schema() -> MetaData:
    """The tables as ``Base.metadata.create_all`` made them before migrations (revision 0001)."""
    md = MetaData()
    ts = DateTime(timezone=True)
    Table(
        "jobs",
        md,
        Column("id", String(40), primary_key=True),
        Column("owner", String(100), nullable=False, index=True),
        Column("name", String(200)),
        Column("status", String(16), nullable=False, index=True),
        Column("spec", JSON, nullable=False),
        Column("idempotency_key", String(200)),
        Column("progress", JSON),
        Column("metrics", JSON),
        Column("error", Text),
        Column("traceback", Text),
        Column("attempts", Integer, nullable=False),
        Column("cancel_requested", Boolean, nullable=False),
        Column("worker", String(200)),
        Column("created_at", ts, nullable=False),
        Column("updated_at", ts, nullable=False),
        Column("started_at", ts),
        Column("finished_at", ts),
        Column("enqueued_at", ts),
        UniqueConstraint("owner", "idempotency_key", name="uq_owner_idempotency"),
    )
    Table(
        "uploads",
        md,
        Column("id", String(40), primary_key=True),
        Column("owner", String(100), nullable=False, index=True),
        Column("filename", String(300), nullable=False),
        Column("path", Text, nullable=False),
        Column("size", Integer, nullable=False),
        Column("sha256", String(64), nullable=False),
        Column("num_tensors", Integer, nullable=False),
        Column("created_at", ts, nullable=False),
    )
    Table(
        "api_keys",
        md,
        Column("id", String(40), primary_key=True),
        Column("owner", String(100), nullable=False, index=True),
        Column("key_hash", String(128), nullable=False, unique=True),
        Column("created_at", ts, nullable=False),
        Column("revoked", Boolean, nullable=False),
    )
    return md


POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432"


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database: a SQLite file, or a PostgreSQL database of its own
    (``scripts/services.sh`` starts the server; skipped when it is not running)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'legacy.db'}"
        return
    name = f"spartan_mig_{uuid.uuid4().hex[:12]}"
    admin = create_engine(f"{POSTGRES}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
    except OperationalError:
        admin.dispose()
        pytest.skip("no PostgreSQL on 127.0.0.1:5432 (scripts/services.sh starts one)")
    try:
        yield f"{POSTGRES}/{name}"
    finally:
        get_engine(f"{POSTGRES}/{name}").dispose()
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def _revision(url: str) -> str | None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return migrations.current(conn)
    finally:
        engine.dispose()


def test_a_new_database_is_at_the_newest_revision_and_matches_the_model(empty_db: str) -> None:
    engine = get_engine(empty_db)
    with engine.connect() as conn:
        assert migrations.current(conn) == migrations.head()
        # every column and index of spartan.store has its migration
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_a_database_from_before_migrations_is_stamped_and_upgraded(empty_db: str) -> None:
    url = empty_db
    legacy = create_engine(url)
    _legacy_schema().create_all(legacy)
    now = datetime.now(UTC)
    with legacy.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO jobs (id, owner, status, spec, attempts, cancel_requested, "
                "created_at, updated_at) VALUES ('job_old', 'alice', 'succeeded', '{}', 1, false, "
                ":now, :now)"
            ),
            {"now": now},
        )
    legacy.dispose()
    assert _revision(url) is None

    store = JobStore(url)  # what every process does on start

    assert _revision(url) == migrations.head()
    job = store.get_job(job_id="job_old")
    assert job is not None and job.owner == "alice" and job.status == "succeeded"
    columns = {c["name"] for c in inspect(store.engine).get_columns("jobs")}
    model_columns = {c.name for c in Base.metadata.tables["jobs"].columns}
    assert model_columns <= columns
    new, created = store.create_job(owner="alice", spec={"name": "after"})
    assert created and store.get_job(job_id=new.id) is not None
    # upgrading again changes nothing
    assert migrations.upgrade(store.engine) == migrations.head()


def test_head_is_alembics_head() -> None:
    from alembic.script import ScriptDirectory

    assert migrations.head() == ScriptDirectory.from_config(migrations.config()).get_current_head()


def test_a_database_with_only_some_tables_gets_the_others(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'partial.db'}"
    legacy = create_engine(url)
    schema = _legacy_schema()
    schema.tables["jobs"].create(legacy)
    legacy.dispose()
    store = JobStore(url)
    assert _revision(url) == migrations.head()
    assert {"jobs", "uploads", "api_keys", "job_metrics"} <= set(
        inspect(store.engine).get_table_names()
    )
    assert create_api_key(store, owner="dan").startswith("spk_")


def test_spartan_db_upgrade(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from spartan.settings import get_settings

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    legacy = create_engine(url)
    _legacy_schema().create_all(legacy)
    legacy.dispose()
    monkeypatch.setenv("SPARTAN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SPARTAN_DATABASE_URL", url)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli_app, ["db", "upgrade"])
        assert result.exit_code == 0, result.output
        assert migrations.head() in result.output
        assert _revision(url) == migrations.head()
        result = CliRunner().invoke(cli_app, ["db", "current"])
        assert result.exit_code == 0 and migrations.head() in result.output
    finally:
        get_settings.cache_clear()


def test_revoked_keys_are_refused(tmp_path: Path) -> None:
    store = JobStore(f"sqlite:///{tmp_path / 'keys.db'}")
    key = create_api_key(store, owner="bob")
    other = create_api_key(store, owner="bob")
    [first, second] = store.list_api_keys(owner="bob")
    assert owner_for_key(store, key) == "bob"
    revoked = store.revoke_api_key(key_id=first.id)
    assert revoked is not None and revoked.revoked
    assert {owner_for_key(store, key), owner_for_key(store, other)} == {None, "bob"}
    assert store.revoke_api_key(key_id="key_nope") is None
    assert [k.revoked for k in store.list_api_keys()] == [True, False]
    assert second.id != first.id

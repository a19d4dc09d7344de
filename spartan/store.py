"""The job store (SQLAlchemy): the source of truth for jobs, sweeps, uploads and API keys.

SQLite by default, PostgreSQL by URL. The broker only carries job ids; everything a job is
(spec, status, progress, metrics, error, delivery attempts, cancellation) lives here, so a lost
broker message or a killed worker loses nothing. Functions return plain pydantic snapshots,
never live ORM objects.
"""

from __future__ import annotations

import secrets
import threading
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    bindparam,
    case,
    cast,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from spartan import migrations
from spartan.settings import get_settings

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
MetricKind = Literal["progress", "epoch"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
UPLOAD_PREFIX = "upl"


def _now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class JobRow(Base):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("owner", "idempotency_key", name="uq_owner_idempotency"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(100), index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    traceback: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    worker: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The running job's lease: renewed by a heartbeat thread of the process that holds it
    # (``lease_holder``: ``spartan.lease.holder_id()``); expired means that process is gone.
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    lease_holder: Mapped[str | None] = mapped_column(String(200))


class UploadRow(Base):
    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(100), index=True)
    filename: Mapped[str] = mapped_column(String(300))
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    num_tensors: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(100), index=True)
    key_hash: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class JobMetricRow(Base):
    """One record of a job's metric series, appended as the job runs (``job_metrics``).

    ``kind`` is ``progress`` (a progress report of the training loop, every phase) or
    ``epoch`` (the per-epoch record: validation top-1, train loss, sparsity, ...). ``id``
    grows with every record, so it orders a job's series and is its event id.
    """

    __tablename__ = "job_metrics"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(40), ForeignKey("jobs.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    step: Mapped[int | None] = mapped_column(Integer)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class SweepRow(Base):
    """One sweep (``spartan.sweeps``): a job spec without a target and the targets on one axis;
    its children are ordinary jobs, linked in ``sweep_jobs``."""

    __tablename__ = "sweeps"
    __table_args__ = (
        UniqueConstraint("owner", "idempotency_key", name="uq_sweep_owner_idempotency"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(100), index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    axis: Mapped[str] = mapped_column(String(16))
    targets: Mapped[list[float]] = mapped_column(JSON)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class SweepJobRow(Base):
    """A child job of a sweep: its place in the sweep's targets and its target value."""

    __tablename__ = "sweep_jobs"

    sweep_id: Mapped[str] = mapped_column(String(40), ForeignKey("sweeps.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(String(40), ForeignKey("jobs.id"), unique=True)
    target: Mapped[float] = mapped_column(Float)


class JobMetric(BaseModel):
    """A snapshot of one record of a job's metric series."""

    id: int
    job_id: str
    kind: MetricKind
    attempt: int
    step: int | None
    data: dict[str, Any]
    created_at: datetime


class ApiKey(BaseModel):
    """A snapshot of one API key (its hash, never the key)."""

    id: str
    owner: str
    created_at: datetime
    revoked: bool


class Job(BaseModel):
    """A snapshot of one job."""

    id: str
    owner: str
    name: str | None
    status: JobStatus
    spec: dict[str, Any]
    progress: dict[str, Any] | None
    metrics: dict[str, Any] | None
    error: str | None
    traceback: str | None
    attempts: int
    cancel_requested: bool
    worker: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    enqueued_at: datetime | None = None
    lease_expires_at: datetime | None = None
    lease_holder: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


class Sweep(BaseModel):
    """A snapshot of one sweep (its children: ``JobStore.sweep_children``)."""

    id: str
    owner: str
    name: str | None
    axis: Literal["sparsity", "cost_fraction"]
    targets: list[float]
    spec: dict[str, Any]
    created_at: datetime


class SweepChild(BaseModel):
    """One child of a sweep: its position, target and the job as it is now."""

    position: int
    target: float
    job: Job


class Upload(BaseModel):
    """A snapshot of one uploaded checkpoint."""

    id: str
    owner: str
    filename: str
    path: str
    size: int
    sha256: str
    num_tensors: int
    created_at: datetime


def _job(row: JobRow) -> Job:
    return Job.model_validate(row, from_attributes=True)


def _sweep(row: SweepRow) -> Sweep:
    return Sweep.model_validate(row, from_attributes=True)


def _same_claim(attempts: int, holder: str | None) -> list[Any]:
    """SQL conditions: the job is still the claim (delivery count and lease holder) read."""
    same_holder = (
        JobRow.lease_holder.is_(None) if holder is None else (JobRow.lease_holder == holder)
    )
    return [JobRow.attempts == attempts, same_holder]


# The jobs table's JSON columns (``JobStore.job_columns`` gives them as text).
JOB_JSON_COLUMNS = frozenset(c.name for c in JobRow.__table__.columns if isinstance(c.type, JSON))


class _ColumnsRead:
    """``SELECT <columns> FROM jobs WHERE id = ?`` compiled once for one engine's dialect, with
    the result processors SQLAlchemy would apply (SQLite's datetimes and booleans)."""

    def __init__(self, engine: Engine, columns: tuple[str, ...]) -> None:
        table = JobRow.__table__
        selected = [
            cast(table.c[n], Text) if n in JOB_JSON_COLUMNS else table.c[n] for n in columns
        ]
        compiled = select(*selected).where(table.c.id == bindparam("job_id")).compile(engine)
        self.engine = engine
        self.sql = compiled.string
        self.positional = compiled.positional
        dialect = engine.dialect
        self.processors = [
            c.type.dialect_impl(dialect).result_processor(dialect, None) for c in selected
        ]
        # SQLite: each thread reads on a connection of its own, kept (a local file: nothing to
        # lose), which saves the pool's checkout and reset; other databases use the pool.
        self._held = threading.local() if dialect.name == "sqlite" else None

    def __call__(self, job_id: str) -> tuple[Any, ...] | None:
        params = (job_id,) if self.positional else {"job_id": job_id}
        if self._held is not None:
            conn = getattr(self._held, "conn", None)
            if conn is None:
                conn = self._held.conn = self.engine.raw_connection()
                conn.detach()  # out of the pool: this thread's for good
            row = self._fetch(conn, params)
            conn.rollback()  # keep no read snapshot between polls (a no-op outside one)
        else:
            conn = self.engine.raw_connection()
            try:
                row = self._fetch(conn, params)
            finally:
                conn.close()  # back to the pool, rolled back
        if row is None:
            return None
        return tuple(
            v if p is None or v is None else p(v) for p, v in zip(self.processors, row, strict=True)
        )

    def _fetch(self, conn: Any, params: Any) -> Any:
        cursor = conn.cursor()
        try:
            cursor.execute(self.sql, params)
            return cursor.fetchone()
        finally:
            cursor.close()


def new_id(prefix: str) -> str:
    """A random, URL-safe identifier such as ``job_3f9c...``."""
    return f"{prefix}_{secrets.token_hex(12)}"


def is_upload_id(ref: str) -> bool:
    """Whether a ``model.checkpoint`` reference is an upload id (else it is a file path)."""
    return ref.startswith(f"{UPLOAD_PREFIX}_")


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    """One engine per database URL, its schema migrated to the newest revision on first use
    (``spartan.migrations``)."""
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        # A file has no server to lose: no ping per checkout. And as many pooled connections
        # as the API has threadpool threads (40), so polls never open one per request.
        kwargs["pool_pre_ping"] = False
        if make_url(url).database not in (None, "", ":memory:"):
            kwargs.update(pool_size=40, max_overflow=10)
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

    migrations.upgrade(engine)
    return engine


class JobStore:
    """Data access for jobs, sweeps, uploads and API keys; every method is keyword-only."""

    def __init__(self, url: str) -> None:
        self.engine = get_engine(url)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self._reads: dict[tuple[str, ...], _ColumnsRead] = {}

    def session(self) -> Session:
        return self._session()

    # jobs -----------------------------------------------------------------------------------
    def create_job(
        self, *, owner: str, spec: dict[str, Any], idempotency_key: str | None = None
    ) -> tuple[Job, bool]:
        """Store a queued job; returns (job, created). A repeated idempotency key returns the
        first job and ``created=False``, also when both submissions race: the unique
        constraint ``uq_owner_idempotency`` lets one insert win and the others read it."""
        if idempotency_key is not None:
            found = self._job_by_key(owner=owner, idempotency_key=idempotency_key)
            if found is not None:
                return found, False
        with self.session() as s:
            row = JobRow(
                id=new_id("job"),
                owner=owner,
                name=spec.get("name"),
                status="queued",
                spec=spec,
                idempotency_key=idempotency_key,
                attempts=0,
                cancel_requested=False,
            )
            s.add(row)
            try:
                s.commit()
            except IntegrityError:
                s.rollback()
                if idempotency_key is None:
                    raise
                found = self._job_by_key(owner=owner, idempotency_key=idempotency_key)
                if found is None:  # not the idempotency constraint
                    raise
                return found, False
            return _job(row), True

    def find_job_by_idempotency_key(self, *, owner: str, idempotency_key: str) -> Job | None:
        """The owner's job submitted with this idempotency key, if any."""
        return self._job_by_key(owner=owner, idempotency_key=idempotency_key)

    def _job_by_key(self, *, owner: str, idempotency_key: str) -> Job | None:
        with self.session() as s:
            row = s.scalar(
                select(JobRow).where(
                    JobRow.owner == owner, JobRow.idempotency_key == idempotency_key
                )
            )
            return _job(row) if row is not None else None

    def get_job(self, *, job_id: str, owner: str | None = None) -> Job | None:
        """The job, or None when it does not exist or belongs to another owner."""
        with self.session() as s:
            row = s.get(JobRow, job_id)
            if row is None or (owner is not None and row.owner != owner):
                return None
            return _job(row)

    def job_columns(self, *, job_id: str, columns: tuple[str, ...]) -> tuple[Any, ...] | None:
        """Some columns of one job, in one light query: no ORM objects, and JSON columns as
        their stored text, unparsed (what polls compare, ``api.polls``); None when absent."""
        # A driver-level read, compiled once: a third of the cost of executing it through
        # SQLAlchemy Core, and polls do little else.
        read = self._reads.get(columns)
        if read is None:
            read = self._reads.setdefault(columns, _ColumnsRead(self.engine, columns))
        return read(job_id)

    def list_jobs(
        self,
        *,
        owner: str | None = None,
        status: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[Job], int]:
        """Jobs newest first, and the total count matching the filters."""
        query = select(JobRow)
        if owner is not None:
            query = query.where(JobRow.owner == owner)
        if status is not None:
            query = query.where(JobRow.status == status)
        with self.session() as s:
            total = s.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = s.scalars(
                query.order_by(JobRow.created_at.desc(), JobRow.id).limit(limit).offset(offset)
            ).all()
            return [_job(r) for r in rows], total

    def _update(self, job_id: str, *conditions: Any, **values: Any) -> bool:
        values["updated_at"] = _now()
        with self.session() as s:
            result = s.execute(
                update(JobRow).where(JobRow.id == job_id, *conditions).values(**values)
            )
            s.commit()
            return result.rowcount > 0

    def mark_enqueued(self, *, job_id: str) -> None:
        """Record when the job's message was last sent to the broker."""
        self._update(job_id, enqueued_at=_now())

    def mark_seen(self, *, job_ids: list[str]) -> None:
        """Record that the messages of these queued jobs were seen in the broker just now
        (so they are not re-sent for another ``resend_after_s``)."""
        if not job_ids:
            return
        with self.session() as s:
            s.execute(
                update(JobRow)
                .where(JobRow.id.in_(job_ids), JobRow.status == "queued")
                .values(enqueued_at=_now())
            )
            s.commit()

    def claim_resend(self, *, job_id: str, older_than: datetime) -> bool:
        """Take the right to re-send a queued job not sent (or seen in the broker) since
        ``older_than``: one conditional update, so of several reconcilers only one sends."""
        return self._update(
            job_id,
            JobRow.status == "queued",
            JobRow.enqueued_at.is_(None) | (JobRow.enqueued_at < older_than),
            enqueued_at=_now(),
        )

    def restore_enqueued(self, *, job_id: str, at: datetime | None) -> None:
        """Put back the send time a failed re-send had claimed (``claim_resend``)."""
        with self.session() as s:
            s.execute(update(JobRow).where(JobRow.id == job_id).values(enqueued_at=at))
            s.commit()

    def start_attempt(
        self,
        *,
        job_id: str,
        worker: str,
        holder: str | None = None,
        lease_s: float | None = None,
        expected: Job | None = None,
    ) -> Job | None:
        """Claim the job: count one delivery, mark it running and take its lease.

        One conditional update. Returns None if the job is finished, or (with ``expected``,
        the snapshot the caller decided on) if another delivery claimed it since: of two
        workers taking the same job only one wins.

        Args:
            worker: ``<celery node>/<pid>`` (for people).
            holder: ``spartan.lease.holder_id()`` of the claiming process.
            lease_s: the lease's time to live; its heartbeat renews it (``heartbeat``).
        """
        now = _now()
        conditions = [JobRow.id == job_id, JobRow.status.not_in(TERMINAL)]
        if expected is not None:
            conditions += _same_claim(expected.attempts, expected.lease_holder)
        values: dict[str, Any] = {
            "attempts": JobRow.attempts + 1,
            "status": "running",
            "worker": worker,
            "lease_holder": holder,
            "lease_expires_at": None if lease_s is None else now + timedelta(seconds=lease_s),
            "started_at": func.coalesce(JobRow.started_at, now),
            "updated_at": now,
        }
        with self.session() as s:
            result = s.execute(update(JobRow).where(*conditions).values(**values))
            if result.rowcount == 0:
                s.rollback()
                return None
            s.commit()
            row = s.get(JobRow, job_id, populate_existing=True)
            return _job(row) if row is not None else None

    def heartbeat(
        self, *, job_id: str, attempt: int, lease_s: float, progress: dict[str, Any] | None = None
    ) -> bool:
        """Renew the lease of a running job (and write its progress) for the attempt that
        holds it; False if the job was finished or taken by another delivery."""
        values: dict[str, Any] = {"lease_expires_at": _now() + timedelta(seconds=lease_s)}
        if progress is not None:
            values["progress"] = progress
        return self._update(
            job_id, JobRow.status == "running", JobRow.attempts == attempt, **values
        )

    def update_progress(self, *, job_id: str, progress: dict[str, Any]) -> None:
        self._update(job_id, JobRow.status == "running", progress=progress)

    def finish(
        self,
        *,
        job_id: str,
        status: JobStatus,
        metrics: dict[str, Any] | None = None,
        error: str | None = None,
        traceback: str | None = None,
    ) -> bool:
        """Move a job to a terminal status; False if it had already finished."""
        assert status in TERMINAL, status
        values: dict[str, Any] = {"status": status, "finished_at": _now()}
        if metrics is not None:
            values["metrics"] = metrics
        if error is not None:
            values["error"] = error[:2000]
        if traceback is not None:
            values["traceback"] = traceback[-20000:]
        return self._update(job_id, JobRow.status.not_in(TERMINAL), **values)

    def request_cancel(self, *, job_id: str) -> Job | None:
        """Flag a job for cancellation; a queued job is cancelled at once."""
        with self.session() as s:
            row = s.get(JobRow, job_id, with_for_update=True)
            if row is None:
                return None
            if row.status not in TERMINAL:
                row.cancel_requested = True
                if row.status == "queued":
                    row.status = "cancelled"
                    row.finished_at = _now()
                row.updated_at = _now()
                s.commit()
            return _job(row)

    def stale_queued(self, *, older_than: datetime) -> list[Job]:
        """Queued jobs last enqueued before ``older_than`` or never (their message may be
        lost)."""
        with self.session() as s:
            rows = s.scalars(
                select(JobRow).where(
                    JobRow.status == "queued",
                    JobRow.enqueued_at.is_(None) | (JobRow.enqueued_at < older_than),
                )
            ).all()
            return [_job(r) for r in rows]

    def running_jobs(self) -> list[Job]:
        """Every running job (few: one per worker), for the reclaimer to check their leases."""
        with self.session() as s:
            rows = s.scalars(select(JobRow).where(JobRow.status == "running")).all()
            return [_job(r) for r in rows]

    def requeue_dead(self, *, job: Job) -> bool:
        """Put a running job whose process is gone back to queued, if it is still the claim
        of the snapshot ``job``; False otherwise (so only one reclaimer wins, and a job
        claimed again meanwhile is left alone)."""
        return self._update(
            job.id,
            JobRow.status == "running",
            *_same_claim(job.attempts, job.lease_holder),
            status="queued",
            worker=None,
            lease_holder=None,
            lease_expires_at=None,
        )

    def requeue_preempted(self, *, job_id: str) -> bool:
        """Put a running job back to queued after a clean preemption (checkpoint written).

        The delivery that ended cleanly is not counted against ``max_delivery_attempts``.
        False if the job was not running.
        """
        return self._update(
            job_id,
            JobRow.status == "running",
            status="queued",
            worker=None,
            lease_holder=None,
            lease_expires_at=None,
            attempts=case((JobRow.attempts > 0, JobRow.attempts - 1), else_=0),
        )

    # sweeps ---------------------------------------------------------------------------------
    def create_sweep(
        self,
        *,
        owner: str,
        axis: str,
        targets: list[float],
        spec: dict[str, Any],
        child_specs: list[dict[str, Any]],
        idempotency_key: str | None = None,
    ) -> tuple[Sweep, list[Job], bool]:
        """Store a sweep and its queued child jobs in one transaction; returns (sweep, its
        jobs in target order, created).

        All or nothing: a crash leaves either no trace or the whole sweep, whose jobs (not
        yet sent: no ``enqueued_at``) the reconcilers send (``spartan.queue.resend_lost``).
        A repeated idempotency key returns the first sweep and ``created=False``, also when
        submissions race (the unique constraint ``uq_sweep_owner_idempotency``).
        """
        assert len(targets) == len(child_specs), (targets, len(child_specs))
        if idempotency_key is not None:
            found = self.find_sweep_by_idempotency_key(owner=owner, idempotency_key=idempotency_key)
            if found is not None:
                return found, [c.job for c in self.sweep_children(sweep_id=found.id)], False
        with self.session() as s:
            sweep = SweepRow(
                id=new_id("swp"),
                owner=owner,
                name=spec.get("name"),
                axis=axis,
                targets=list(targets),
                spec=spec,
                idempotency_key=idempotency_key,
            )
            s.add(sweep)
            jobs = [
                JobRow(
                    id=new_id("job"),
                    owner=owner,
                    name=child.get("name"),
                    status="queued",
                    spec=child,
                    attempts=0,
                    cancel_requested=False,
                )
                for child in child_specs
            ]
            s.add_all(jobs)
            s.flush()  # the parents before the links (PostgreSQL checks the foreign keys)
            s.add_all(
                SweepJobRow(sweep_id=sweep.id, position=i, job_id=job.id, target=target)
                for i, (job, target) in enumerate(zip(jobs, targets, strict=True))
            )
            try:
                s.commit()
            except IntegrityError:
                s.rollback()
                if idempotency_key is None:
                    raise
                found = self.find_sweep_by_idempotency_key(
                    owner=owner, idempotency_key=idempotency_key
                )
                if found is None:
                    raise
                return found, [c.job for c in self.sweep_children(sweep_id=found.id)], False
            return _sweep(sweep), [_job(j) for j in jobs], True

    def find_sweep_by_idempotency_key(self, *, owner: str, idempotency_key: str) -> Sweep | None:
        """The owner's sweep submitted with this idempotency key, if any."""
        with self.session() as s:
            row = s.scalar(
                select(SweepRow).where(
                    SweepRow.owner == owner, SweepRow.idempotency_key == idempotency_key
                )
            )
            return _sweep(row) if row is not None else None

    def get_sweep(self, *, sweep_id: str, owner: str | None = None) -> Sweep | None:
        """The sweep, or None when it does not exist or belongs to another owner."""
        with self.session() as s:
            row = s.get(SweepRow, sweep_id)
            if row is None or (owner is not None and row.owner != owner):
                return None
            return _sweep(row)

    def list_sweeps(
        self, *, owner: str | None = None, limit: int = 50, offset: int = 0
    ) -> tuple[list[Sweep], int]:
        """Sweeps newest first, and how many there are in all."""
        query = select(SweepRow)
        if owner is not None:
            query = query.where(SweepRow.owner == owner)
        with self.session() as s:
            total = s.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = s.scalars(
                query.order_by(SweepRow.created_at.desc(), SweepRow.id).limit(limit).offset(offset)
            ).all()
            return [_sweep(r) for r in rows], total

    def sweep_children(self, *, sweep_id: str) -> list[SweepChild]:
        """The sweep's child jobs as they are now, in the order of its targets."""
        return self.sweeps_children(sweep_ids=[sweep_id]).get(sweep_id, [])

    def sweeps_children(self, *, sweep_ids: list[str]) -> dict[str, list[SweepChild]]:
        """The children of several sweeps in one query: sweep id -> its children in order."""
        if not sweep_ids:
            return {}
        query = (
            select(SweepJobRow, JobRow)
            .join(JobRow, JobRow.id == SweepJobRow.job_id)
            .where(SweepJobRow.sweep_id.in_(sweep_ids))
            .order_by(SweepJobRow.sweep_id, SweepJobRow.position)
        )
        out: dict[str, list[SweepChild]] = {}
        with self.session() as s:
            for link, job in s.execute(query):
                out.setdefault(link.sweep_id, []).append(
                    SweepChild(position=link.position, target=link.target, job=_job(job))
                )
        return out

    def sweep_of_job(self, *, job_id: str) -> str | None:
        """The id of the sweep a job belongs to, if any."""
        with self.session() as s:
            return s.scalar(select(SweepJobRow.sweep_id).where(SweepJobRow.job_id == job_id))

    # metric series --------------------------------------------------------------------------
    def add_metric(
        self, *, job_id: str, kind: MetricKind, data: dict[str, Any], attempt: int = 0
    ) -> int:
        """Append one record to the job's series; returns its id (increasing)."""
        step = data.get("step")
        with self.session() as s:
            row = JobMetricRow(
                job_id=job_id,
                kind=kind,
                attempt=attempt,
                step=step if isinstance(step, int) else None,
                data=data,
            )
            s.add(row)
            s.commit()
            return row.id

    def list_metrics(
        self, *, job_id: str, after: int = 0, kind: MetricKind | None = None
    ) -> list[JobMetric]:
        """The job's records with ``id > after``, oldest first (optionally of one kind)."""
        query = select(JobMetricRow).where(JobMetricRow.job_id == job_id, JobMetricRow.id > after)
        if kind is not None:
            query = query.where(JobMetricRow.kind == kind)
        with self.session() as s:
            rows = s.scalars(query.order_by(JobMetricRow.id)).all()
            return [JobMetric.model_validate(r, from_attributes=True) for r in rows]

    def last_metric_id(self, *, job_id: str) -> int:
        """The id of the job's newest record (0: none yet)."""
        with self.session() as s:
            found = s.scalar(select(func.max(JobMetricRow.id)).where(JobMetricRow.job_id == job_id))
            return int(found or 0)

    # uploads --------------------------------------------------------------------------------
    def add_upload(
        self, *, owner: str, filename: str, path: str, size: int, sha256: str, num_tensors: int
    ) -> Upload:
        with self.session() as s:
            row = UploadRow(
                id=new_id(UPLOAD_PREFIX),
                owner=owner,
                filename=filename,
                path=path,
                size=size,
                sha256=sha256,
                num_tensors=num_tensors,
            )
            s.add(row)
            s.commit()
            return Upload.model_validate(row, from_attributes=True)

    def get_upload(self, *, upload_id: str, owner: str | None = None) -> Upload | None:
        with self.session() as s:
            row = s.get(UploadRow, upload_id)
            if row is None or (owner is not None and row.owner != owner):
                return None
            return Upload.model_validate(row, from_attributes=True)

    # api keys -------------------------------------------------------------------------------
    def add_api_key(self, *, owner: str, key_hash: str) -> str:
        with self.session() as s:
            row = ApiKeyRow(id=new_id("key"), owner=owner, key_hash=key_hash, revoked=False)
            s.add(row)
            s.commit()
            return row.id

    def owner_for_key_hash(self, *, key_hash: str) -> str | None:
        with self.session() as s:
            row = s.scalar(
                select(ApiKeyRow).where(
                    ApiKeyRow.key_hash == key_hash, ApiKeyRow.revoked.is_(False)
                )
            )
            return row.owner if row is not None else None

    def list_api_keys(self, *, owner: str | None = None) -> list[ApiKey]:
        """Every key (or the owner's), oldest first."""
        query = select(ApiKeyRow).order_by(ApiKeyRow.created_at, ApiKeyRow.id)
        if owner is not None:
            query = query.where(ApiKeyRow.owner == owner)
        with self.session() as s:
            return [ApiKey.model_validate(r, from_attributes=True) for r in s.scalars(query)]

    def revoke_api_key(self, *, key_id: str) -> ApiKey | None:
        """Revoke a key (requests with it get 401 from then on); None if there is no such key.
        Revoking twice is not an error."""
        with self.session() as s:
            row = s.get(ApiKeyRow, key_id)
            if row is None:
                return None
            row.revoked = True
            s.commit()
            return ApiKey.model_validate(row, from_attributes=True)


def get_store(url: str | None = None) -> JobStore:
    """The store at ``url``, or at the configured database URL."""
    if url is None:
        url = get_settings().database_url
    return _store(url)


@lru_cache(maxsize=8)
def _store(url: str) -> JobStore:
    return JobStore(url)

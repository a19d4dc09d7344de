"""Sweeps in the job store, on SQLite and on PostgreSQL: one transaction for the sweep and its
children, children in target order, owners, idempotency, and a failed insert leaving nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.exc import IntegrityError

from spartan.store import JobStore
from tests.spartan.test_migrations import empty_db  # noqa: F401  (the sqlite/postgresql fixture)


def _children(targets: list[float]) -> list[dict]:
    return [{"name": "s", "sparsity": {"cost_fraction": t}} for t in targets]


def test_a_sweep_and_its_children(empty_db: str) -> None:  # noqa: F811
    store = JobStore(empty_db)
    targets = [0.5, 0.3, 0.1]
    sweep, jobs, created = store.create_sweep(
        owner="alice",
        axis="cost_fraction",
        targets=targets,
        spec={"name": "s", "sparsity": {}},
        child_specs=_children(targets),
    )
    assert created and sweep.id.startswith("swp_") and sweep.targets == targets
    assert [j.spec["sparsity"]["cost_fraction"] for j in jobs] == targets
    assert all(j.status == "queued" and j.enqueued_at is None for j in jobs)
    # ordinary jobs: listed, and (never sent) picked up by the reconcilers' resend
    listed, count = store.list_jobs(owner="alice")
    assert count == 3 and {j.id for j in listed} == {j.id for j in jobs}
    stale = store.stale_queued(older_than=datetime.now(UTC) + timedelta(seconds=1))
    assert {j.id for j in jobs} <= {j.id for j in stale}

    children = store.sweep_children(sweep_id=sweep.id)
    assert [(c.position, c.target, c.job.id) for c in children] == [
        (i, t, j.id) for i, (t, j) in enumerate(zip(targets, jobs, strict=True))
    ]
    assert store.sweep_of_job(job_id=jobs[1].id) == sweep.id
    assert store.sweep_of_job(job_id="job_none") is None
    read = store.get_sweep(sweep_id=sweep.id, owner="alice")
    assert read is not None and read.model_dump(exclude={"created_at"}) == sweep.model_dump(
        exclude={"created_at"}
    )
    assert store.get_sweep(sweep_id=sweep.id, owner="bob") is None
    assert store.list_sweeps(owner="bob") == ([], 0)
    listed_sweeps, n = store.list_sweeps(owner="alice")
    assert n == 1 and [s.id for s in listed_sweeps] == [sweep.id]


def test_a_repeated_idempotency_key_returns_the_first_sweep(empty_db: str) -> None:  # noqa: F811
    store = JobStore(empty_db)
    kwargs = {
        "owner": "alice",
        "axis": "sparsity",
        "targets": [0.9, 0.8],
        "spec": {},
        "child_specs": [{"sparsity": {"sparsity": 0.9}}, {"sparsity": {"sparsity": 0.8}}],
        "idempotency_key": "k",
    }
    first, jobs, created = store.create_sweep(**kwargs)  # type: ignore[arg-type]
    again, same_jobs, created_again = store.create_sweep(**kwargs)  # type: ignore[arg-type]
    assert created and not created_again
    assert again.id == first.id and [j.id for j in same_jobs] == [j.id for j in jobs]
    assert store.list_jobs(owner="alice")[1] == 2


def test_a_failed_insert_leaves_no_half_sweep(
    empty_db: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = JobStore(empty_db)
    ids = iter(["job_taken", "swp_half", "job_new", "job_taken"])
    monkeypatch.setattr("spartan.store.new_id", lambda prefix: next(ids))
    store.create_job(owner="alice", spec={})
    with pytest.raises(IntegrityError):  # the second child's id is taken
        store.create_sweep(
            owner="alice", axis="sparsity", targets=[0.9, 0.8], spec={}, child_specs=[{}, {}]
        )
    assert store.list_sweeps() == ([], 0)
    assert [j.id for j in store.list_jobs()[0]] == ["job_taken"]
    assert store.get_sweep(sweep_id="swp_half") is None

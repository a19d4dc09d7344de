"""The event stream of a job (``GET /v1/jobs/{id}/events``), resumable with ``Last-Event-ID``.

Every event's id is the id of the newest record of the job's metric series it reflects
(``JobStore.add_metric``: ids grow), so a client that reconnects with the last id it saw
(``Last-Event-ID``, as browsers' ``EventSource`` send it, or ``?last_event_id=``) gets every
record it missed, in order, then the stream goes on live; nothing is sent twice.

Events:

- ``progress``: ``{id, status, progress}``: one per progress report the worker stored, and
  one whenever the job's status or latest progress changes otherwise (queued, running, a
  re-queue); a fresh connection starts with one such event for the job as it is now. Such a
  status event may repeat the step of a stored report: key a series by ``step``;
- ``epoch``: ``{id, status, epoch}``: an epoch's record (validation top-1, train loss, ...);
- ``end``: the whole job (``JobPublic``) once it has finished, after every record.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi.concurrency import run_in_threadpool
from fastapi.sse import ServerSentEvent

from api.schemas import JobPublic
from spartan.store import Job, JobMetric, JobStore


def parse_last_event_id(value: str | None) -> int | None:
    """The record id a reconnecting client last saw; None for none or one not ours."""
    text = (value or "").strip()
    if not text.isdigit() or len(text) > 18:  # record ids fit in 64 bits
        return None
    return int(text)


def record_event(job: Job, record: JobMetric) -> ServerSentEvent:
    """A stored record as an event (``progress`` or ``epoch``)."""
    key = "epoch" if record.kind == "epoch" else "progress"
    data: dict[str, Any] = {"id": job.id, "status": job.status, key: record.data}
    return ServerSentEvent(event=key, id=str(record.id), data=data)


def snapshot_event(job: Job, last_id: int) -> ServerSentEvent:
    """The job's status and latest progress as a ``progress`` event."""
    data = {"id": job.id, "status": job.status, "progress": job.progress}
    return ServerSentEvent(event="progress", id=str(last_id), data=data)


def _content(progress: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a progress report says: without the heartbeat's ``updated_at`` and the worker's
    ``attempt`` (so a heartbeat that only re-writes the time sends no event)."""
    if progress is None:
        return None
    return {k: v for k, v in progress.items() if k not in ("updated_at", "attempt")}


async def job_events(
    store: JobStore,
    job_id: str,
    *,
    last_event_id: int | None,
    disconnected: Callable[[], Awaitable[bool]],
    poll_s: float,
) -> AsyncIterator[ServerSentEvent]:
    """The events of one job until it ends (see the module docstring).

    Args:
        last_event_id: resume after this record id (None: a fresh connection).
        disconnected: whether the client has gone (checked between polls).
        poll_s: seconds between reads of the store.
    """
    after = last_event_id or 0
    if last_event_id is None:
        after = await run_in_threadpool(store.last_metric_id, job_id=job_id)
    last: tuple[str, Any] | None = None
    while True:
        # the job first, then its records: a finished job's records are all written
        current = await run_in_threadpool(store.get_job, job_id=job_id)
        if current is None:
            return
        records = await run_in_threadpool(store.list_metrics, job_id=job_id, after=after)
        for record in records:
            yield record_event(current, record)
            after = record.id
        snapshot = (current.status, _content(current.progress))
        if records:
            last = snapshot
        elif snapshot != last and (last is not None or last_event_id is None):
            yield snapshot_event(current, after)
            last = snapshot
        elif last is None:
            last = snapshot  # resumed: the client has seen this state
        if current.finished:
            yield ServerSentEvent(
                event="end", id=str(after), data=JobPublic.from_job(current).model_dump(mode="json")
            )
            return
        if await disconnected():
            return
        await asyncio.sleep(poll_s)

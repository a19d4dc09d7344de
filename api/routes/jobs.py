"""Jobs: submit, list, read, cancel, and follow progress as server-sent events."""

from __future__ import annotations

from collections.abc import AsyncIterable
from functools import partial
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.sse import EventSourceResponse, ServerSentEvent

from api import events, quotas, services
from api.deps import (
    BrokerDep,
    IdempotencyKeyHeader,
    JobIdPath,
    OwnedJobDep,
    OwnerDep,
    PollsDep,
    RuntimeDep,
    SettingsDep,
    StoreDep,
)
from api.schemas import ErrorPublic, JobCreated, JobPublic, JobsPublic
from spartan.spec import JobSpec

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

_ERRORS = {
    400: {"model": ErrorPublic, "description": "invalid request (the field is named)"},
    401: {"model": ErrorPublic, "description": "missing or unknown API key"},
    404: {"model": ErrorPublic, "description": "no such job for this owner"},
    422: {"model": ErrorPublic, "description": "schema validation failed"},
}
EVENT_POLL_S = 0.5


@router.post(
    "",
    status_code=201,
    response_model=JobCreated,
    responses={
        **_ERRORS,
        409: {"model": ErrorPublic},
        413: {"model": ErrorPublic},
        429: {"model": ErrorPublic, "description": "at a job quota; see Retry-After"},
    },
)
def create_job(
    spec: JobSpec,
    response: Response,
    settings: SettingsDep,
    store: StoreDep,
    broker: BrokerDep,
    owner: OwnerDep,
    runtime: RuntimeDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JobCreated:
    """Submit a training job. It is stored as ``queued``, then handed to a worker.

    Refused with 429 (and ``Retry-After``) while the owner is at a job quota
    (``api.quotas``), and with 400 when the job's memory estimate is over the service's limit
    (``runtime.bounds``).
    """
    quotas.check_quota(store=store, settings=settings, owner=owner, idempotency_key=idempotency_key)
    job, created = services.submit_job(
        spec,
        validate=partial(runtime.validate_job, settings=settings, store=store, owner=owner),
        settings=settings,
        store=store,
        broker=broker,
        owner=owner,
        idempotency_key=idempotency_key,
    )
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobCreated(id=job.id, status=job.status)


@router.get("", response_model=JobsPublic, responses=_ERRORS)
def list_jobs(
    store: StoreDep,
    owner: OwnerDep,
    status: Annotated[
        Literal["queued", "running", "succeeded", "failed", "cancelled"] | None, Query()
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> JobsPublic:
    """The owner's jobs, newest first, one page at a time."""
    jobs, count = store.list_jobs(owner=owner, status=status, limit=limit, offset=offset)
    return JobsPublic(
        data=[JobPublic.from_job(j) for j in jobs], count=count, limit=limit, offset=offset
    )


@router.get("/{job_id}", response_model=JobPublic, responses=_ERRORS)
async def get_job(job_id: JobIdPath, owner: OwnerDep, polls: PollsDep) -> Response:
    """Status, progress, metrics and error of one job."""
    body = await polls.answer(job_id=job_id, owner=owner)
    return Response(body, media_type="application/json")


@router.post("/{job_id}/cancel", response_model=JobPublic, responses=_ERRORS)
async def cancel_job(
    job: OwnedJobDep,
    request: Request,
    store: StoreDep,
    owner: OwnerDep,
) -> JobPublic:
    """Cancel a job: a queued job at once, a running one at its next training step.

    If a running job has not stopped after ``settings.cancel_grace_s`` seconds its task is
    terminated and the job recorded as cancelled.
    """
    cancelled = await run_in_threadpool(
        services.cancel_job, store=store, job_id=job.id, owner=owner
    )
    if cancelled.status == "running":
        request.app.state.watch_cancel(cancelled.id)
    return JobPublic.from_job(cancelled)


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    responses={
        **_ERRORS,
        200: {
            "description": "`progress` events ({id, status, progress}) for every stored progress "
            "report and whenever the status or progress changes, `epoch` events ({id, status, "
            "epoch}) for epoch records, then one `end` event with the whole job when it has "
            "finished. Event ids are the job's metric record ids: reconnect with "
            "`Last-Event-ID` (or `?last_event_id=`) to get what was missed (`api.events`)"
        },
    },
)
async def job_events(
    job: OwnedJobDep,
    request: Request,
    store: StoreDep,
    last_event_id: Annotated[
        str | None,
        Header(alias="Last-Event-ID", description="resume after this event id"),
    ] = None,
    last_event_id_query: Annotated[
        str | None,
        Query(
            alias="last_event_id",
            max_length=40,
            description="the same as the Last-Event-ID header (which wins when both are sent)",
        ),
    ] = None,
) -> AsyncIterable[ServerSentEvent]:
    """Follow a job live: its records and progress until it ends, then an ``end`` event."""
    resume = events.parse_last_event_id(
        last_event_id if last_event_id is not None else last_event_id_query
    )
    async for event in events.job_events(
        store,
        job.id,
        last_event_id=resume,
        disconnected=request.is_disconnected,
        poll_s=EVENT_POLL_S,
    ):
        yield event

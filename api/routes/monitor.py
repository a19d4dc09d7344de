"""What a job has recorded as it runs: its metric series and its log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from api.deps import OwnedJobDep, SettingsDep, StoreDep
from api.schemas import ErrorPublic, JobMetricsPublic
from spartan.joblog import MAX_READ_BYTES, read_log
from spartan.resolve import job_log_path
from spartan.series import metric_series

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

_ERRORS = {
    401: {"model": ErrorPublic, "description": "missing or unknown API key"},
    404: {"model": ErrorPublic, "description": "no such job for this owner"},
    422: {"model": ErrorPublic, "description": "a query parameter is out of range"},
}
NEXT_OFFSET = "X-Log-Offset"


@router.get("/{job_id}/metrics", response_model=JobMetricsPublic, responses=_ERRORS)
def job_metrics(job: OwnedJobDep, store: StoreDep) -> JobMetricsPublic:
    """The job's whole metric series so far: every training progress point and every
    epoch's record, stored as the job runs (empty for a job that has not started)."""
    records = store.list_metrics(job_id=job.id)
    points, epochs = metric_series(records)
    last = records[-1].id if records else 0
    return JobMetricsPublic(job_id=job.id, points=points, epochs=epochs, last_id=last)


@router.get(
    "/{job_id}/logs",
    response_class=Response,
    responses={
        **_ERRORS,
        200: {
            "content": {"text/plain": {}},
            "description": f"the log from `offset` on; the `{NEXT_OFFSET}` header is the "
            "offset to ask for next (poll with it to follow a running job)",
        },
    },
)
def job_logs(
    job: OwnedJobDep,
    settings: SettingsDep,
    offset: Annotated[
        int, Query(ge=0, description="byte offset to start at (a previous X-Log-Offset)")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_READ_BYTES, description="bytes at most")] = (
        MAX_READ_BYTES
    ),
) -> Response:
    """The job's log (also the artifact ``log.txt``), as plain text, from ``offset`` on."""
    data, next_offset = read_log(job_log_path(settings, job.id), offset=offset, limit=limit)
    return Response(
        content=data,
        media_type="text/plain; charset=utf-8",
        headers={NEXT_OFFSET: str(next_offset), "X-Job-Status": job.status},
    )

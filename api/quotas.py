"""Per-owner quotas on jobs, checked when a job is submitted.

An owner with ``settings.max_queued_jobs_per_owner`` jobs queued, or
``settings.max_running_jobs_per_owner`` running, gets 429 with ``Retry-After:
settings.quota_retry_after_s`` for a new job (0 turns a limit off). A retried submission whose
``Idempotency-Key`` already names a job is answered with that job as before, whatever the
counts. The counts are read, then the job is inserted: submissions racing at the limit may pass
it by the number of racers, which a quota tolerates.
"""

from __future__ import annotations

from api.errors import ApiError
from spartan.settings import Settings
from spartan.store import JobStore


def check_quota(
    *,
    store: JobStore,
    settings: Settings,
    owner: str,
    idempotency_key: str | None = None,
    adding: int = 1,
) -> None:
    """Raise 429 if ``owner`` may not submit ``adding`` more jobs now (a sweep adds one per
    target): the queued jobs would be over their limit, or the running ones are at theirs.

    Raises:
        ApiError: 429 naming the count and the setting that limits it, with ``Retry-After``.
    """
    if idempotency_key is not None and (
        store.find_job_by_idempotency_key(owner=owner, idempotency_key=idempotency_key) is not None
    ):
        return
    for status, limit, setting in (
        ("queued", settings.max_queued_jobs_per_owner, "SPARTAN_MAX_QUEUED_JOBS_PER_OWNER"),
        ("running", settings.max_running_jobs_per_owner, "SPARTAN_MAX_RUNNING_JOBS_PER_OWNER"),
    ):
        if limit <= 0:
            continue
        _, count = store.list_jobs(owner=owner, status=status, limit=0)
        more = adding if status == "queued" else 1
        if count + more > limit:
            asks = f" and asks for {more} more" if more > 1 else ""
            raise ApiError(
                429,
                f"{owner!r} has {count} {status} jobs{asks}, the limit of this service ({setting}"
                f"={limit}); try again when some have finished, or cancel some",
                loc=[],
                type="quota_exceeded",
                headers={"Retry-After": str(settings.quota_retry_after_s)},
            )

"""Re-queue jobs whose worker died without a word (SIGKILL, power loss, a lost node).

A running job's worker writes progress at a bounded rate, which bumps the job's
``updated_at``: the heartbeat. When a whole worker dies, its job stays ``running`` and its
broker message is either invisible for the visibility timeout (Redis, days for long jobs) or
gone (the SQLAlchemy transport marks delivered messages invisible for good). So every worker
runs ``Reclaimer`` in its parent process: a thread that finds running jobs silent for longer than
``settings.heartbeat_timeout_s``, puts them back to queued (one conditional update, so only
one reclaimer wins) and sends them again; the next delivery resumes from the checkpoint.

No torch here: this runs in the worker's parent process.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError

from spartan.queue import BROKER_DOWN, Broker, send_job
from spartan.settings import Settings
from spartan.store import JobStore

log = logging.getLogger(__name__)

# Errors of an unreachable database or broker: log and try again on the next round.
TRANSIENT = (SQLAlchemyError, *BROKER_DOWN)


def reclaim_lost_jobs(
    *, store: JobStore, broker: Broker, settings: Settings, now: datetime | None = None
) -> list[str]:
    """Re-queue and re-send running jobs silent for ``heartbeat_timeout_s``; their ids."""
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(seconds=settings.heartbeat_timeout_s)
    reclaimed = []
    for job in store.stale_running(older_than=cutoff):
        if not store.requeue_stale(job_id=job.id, older_than=cutoff):
            continue  # it reported meanwhile, or another reclaimer won
        queue = send_job(job, store=store, broker=broker, settings=settings)
        log.warning(
            "job %s: no progress from worker %s since %s; re-queued on %s",
            job.id,
            job.worker,
            job.updated_at.isoformat(),
            queue,
        )
        reclaimed.append(job.id)
    return reclaimed


class Reclaimer:
    """A daemon thread calling ``reclaim_lost_jobs`` every ``interval_s`` seconds."""

    def __init__(
        self, *, store: JobStore, broker: Broker, settings: Settings, interval_s: float
    ) -> None:
        self.store = store
        self.broker = broker
        self.settings = settings
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="spartan-reclaimer", daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to stop after its current round."""
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                reclaim_lost_jobs(store=self.store, broker=self.broker, settings=self.settings)
            except TRANSIENT as exc:
                log.warning("reclaiming lost jobs failed (will retry): %s", exc)
            self._stop.wait(self.interval_s)

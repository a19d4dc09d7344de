"""The worker's reconciler: the store is the source of truth, the broker is made to agree.

Every worker runs ``Reclaimer`` in its parent process: a thread that, every
``settings.reconcile_interval_s``,

- re-queues running jobs whose process is gone (``spartan.lease.is_lost``: its lease was not
  renewed for ``lease_ttl_s``, or it was a process of this machine that no longer runs) with
  one conditional update (so only one reclaimer wins, and a job claimed again meanwhile is
  left alone), and sends them again ahead of new jobs; the next delivery resumes from the
  checkpoint. This is what finds a whole worker killed (its message sits unacknowledged in
  Redis for the visibility timeout, or the SQLAlchemy transport keeps it invisible for good);
- re-sends queued jobs whose message the broker lost (``spartan.queue.resend_lost``).

No torch here: this runs in the worker's parent process.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

from sqlalchemy.exc import SQLAlchemyError

from spartan.lease import is_lost
from spartan.queue import BROKER_DOWN, Broker, resend_lost, send_job
from spartan.settings import Settings
from spartan.store import JobStore

log = logging.getLogger(__name__)

# Errors of an unreachable database or broker: log and try again on the next round.
TRANSIENT = (SQLAlchemyError, *BROKER_DOWN)


def reclaim_lost_jobs(
    *, store: JobStore, broker: Broker, settings: Settings, now: datetime | None = None
) -> list[str]:
    """Re-queue and re-send running jobs whose process is gone; their ids."""
    now = now or datetime.now(UTC)
    reclaimed = []
    for job in store.running_jobs():
        if not is_lost(job, settings=settings, now=now):
            continue
        if not store.requeue_dead(job=job):
            continue  # claimed again meanwhile, or another reclaimer won
        queue = send_job(job, store=store, broker=broker, settings=settings)
        log.warning(
            "job %s: its process %s (worker %s) is gone (lease until %s); re-queued on %s",
            job.id,
            job.lease_holder,
            job.worker,
            job.lease_expires_at.isoformat() if job.lease_expires_at else None,
            queue,
        )
        reclaimed.append(job.id)
    return reclaimed


def reconcile(
    *, store: JobStore, broker: Broker, settings: Settings, now: datetime | None = None
) -> tuple[list[str], list[str]]:
    """One round: (jobs reclaimed from dead processes, queued jobs re-sent)."""
    reclaimed = reclaim_lost_jobs(store=store, broker=broker, settings=settings, now=now)
    resent = resend_lost(store=store, broker=broker, settings=settings, now=now)
    return reclaimed, resent


class Reclaimer:
    """A daemon thread calling ``reconcile`` every ``interval_s`` seconds."""

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
                reconcile(store=self.store, broker=self.broker, settings=self.settings)
            except TRANSIENT as exc:
                log.warning("reconciling the store with the broker failed (will retry): %s", exc)
            self._stop.wait(self.interval_s)

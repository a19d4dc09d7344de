"""Liveness of the process running a job, from that process itself.

The process that claims a job (``JobStore.start_attempt``) takes a lease: ``lease_holder``
names it (``holder_id()``: host, PID, and this machine's boot and PID namespace) and
``lease_expires_at`` is renewed by its heartbeat thread every ``renew_interval_s`` (the thread
dies with the process, so a SIGKILL stops the renewals at once). A job is held by a live process
while its lease is being renewed; it is lost when

- its lease expired (``lease_ttl_s`` without a renewal: the process is gone or cut off), or
- its holder is a process of this machine and PID namespace that no longer runs (seen at
  once, without waiting for the lease), or
- it has no lease (claimed by an older worker) and no progress for ``heartbeat_timeout_s``.

Torch-free: the worker's parent process (the reclaimer) and the job runtime both use it.
Clocks of the machines that share a store are assumed to agree to well under ``lease_ttl_s``
(NTP); a renewal seen (``lease_expires_at`` changing) is proof of life on any clock.
"""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

from spartan.settings import Settings
from spartan.store import Job


def renew_interval_s(settings: Settings) -> float:
    """Seconds between two renewals of a lease: a few renewals fit in one TTL."""
    return max(0.05, min(settings.progress_interval_s, settings.lease_ttl_s / 3))


@lru_cache(maxsize=1)
def _machine() -> str:
    """This boot of this machine and this PID namespace ("" where /proc cannot tell)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        pid_ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return ""
    return f"{boot[:8]}:{pid_ns}"


def holder_id(pid: int | None = None) -> str:
    """``<hostname>/<pid>@<boot>:<pid namespace>`` of this process (or of ``pid`` here)."""
    return f"{socket.gethostname()}/{pid or os.getpid()}@{_machine()}"


def holder_gone(holder: str | None) -> bool:
    """True only when ``holder`` is a process of this machine and PID namespace that no
    longer runs (or is a zombie). False for other machines, unknown holders, and live PIDs
    (a reused PID can only delay the verdict to the lease's expiry, never make it wrong)."""
    if not holder or "@" not in holder or not _machine():
        return False
    where, machine = holder.rsplit("@", 1)
    host, _, pid_text = where.rpartition("/")
    if machine != _machine() or host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # it exists, under another user
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state in ("Z", "X")


def aware(when: datetime) -> datetime:
    """``when`` as an aware UTC datetime (SQLite hands naive UTC datetimes back)."""
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def lease_expired(job: Job, *, settings: Settings, now: datetime | None = None) -> bool:
    """Whether a running job's lease ran out (or, without a lease, its progress went silent
    for ``heartbeat_timeout_s``)."""
    now = now or datetime.now(UTC)
    if job.lease_expires_at is not None:
        return aware(job.lease_expires_at) <= now
    silent = (now - aware(job.updated_at)).total_seconds()
    return silent >= settings.heartbeat_timeout_s


def is_lost(job: Job, *, settings: Settings, now: datetime | None = None) -> bool:
    """Whether a running job's process is gone: its lease expired or its holder is a dead
    process of this machine."""
    return job.status == "running" and (
        holder_gone(job.lease_holder) or lease_expired(job, settings=settings, now=now)
    )

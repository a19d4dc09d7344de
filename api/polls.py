"""Job polls, kept cheap: ``GET /v1/jobs/{id}`` answers JobPublic's JSON from a small cache that
holds while the job's stored row is unchanged.

Polls are the service's hottest request (``spartan submit --wait``, scripts, the dashboard), so
each one is one light query of the columns JobPublic shows, JSON columns as their stored text
(``JobStore.job_columns``: no ORM objects, nothing parsed), compared with the row the cached
answer was built from. Only a changed row is parsed, validated and serialized again. Every poll
still reads the database, the source of truth, so a change written by any process (a worker,
the CLI) shows at the next poll; the cache only saves rebuilding identical answers.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any

from starlette.concurrency import run_in_threadpool

from api.errors import not_found
from api.schemas import JobPublic
from spartan.store import JOB_JSON_COLUMNS, JobStore

# The stored columns behind each answer: the owner (checked, not shown), then JobPublic's.
COLUMNS: tuple[str, ...] = ("owner", *JobPublic.model_fields)
_JSON_FIELDS = [name for name in COLUMNS if name in JOB_JSON_COLUMNS]


class PollCache:
    """JobPublic's JSON per job id, with the row it was built from; least recently used first
    out beyond ``maxsize`` jobs (an entry is a few kB: about 1 MB at the default)."""

    def __init__(self, store: JobStore, *, maxsize: int = 256) -> None:
        self.store = store
        self.on_loop = store.engine.dialect.name == "sqlite"
        self.maxsize = maxsize
        self._entries: OrderedDict[str, tuple[tuple[Any, ...], bytes]] = OrderedDict()
        self._lock = threading.Lock()

    async def answer(self, *, job_id: str, owner: str) -> bytes:
        """``job_json`` from the event loop: in the threadpool, except on SQLite, where the
        read is a primary-key lookup in a local file (tens of microseconds, never blocked by
        the writer in WAL mode), cheaper than the hop to a thread and back."""
        if self.on_loop:
            return self.job_json(job_id=job_id, owner=owner)
        return await run_in_threadpool(self.job_json, job_id=job_id, owner=owner)

    def job_json(self, *, job_id: str, owner: str) -> bytes:
        """The job as its owner sees it (JobPublic), serialized.

        Raises:
            ApiError: 404 when there is no such job or it is another owner's.
        """
        row = self.store.job_columns(job_id=job_id, columns=COLUMNS)
        if row is None or row[0] != owner:
            raise not_found("job", ["path", "job_id"])
        with self._lock:
            entry = self._entries.get(job_id)
            if entry is not None and entry[0] == row:
                self._entries.move_to_end(job_id)
                return entry[1]
        body = _serialize(row)
        with self._lock:
            self._entries[job_id] = (row, body)
            self._entries.move_to_end(job_id)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)
        return body


def _serialize(row: tuple[Any, ...]) -> bytes:
    values = dict(zip(COLUMNS[1:], row[1:], strict=True))
    for name in _JSON_FIELDS:
        if isinstance(values[name], str):  # stored JSON text (SQL NULL stays None)
            values[name] = json.loads(values[name])
    return JobPublic.model_validate(values).model_dump_json().encode()

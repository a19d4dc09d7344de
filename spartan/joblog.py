"""A job's log: captured by the worker while the job runs, read by the API as it grows.

The worker attaches ``capture_log`` for the job's duration: every record of the process at
INFO or above (the training loop, the deployment, warnings, the traceback of a failure) is
appended to ``log.txt`` in the job's artifact folder, so it is an artifact too. A resumed job
appends to the same file. ``read_log`` answers ``GET /v1/jobs/{id}/logs?offset=N``: the bytes
from ``N`` on, and the offset to ask for next, so a follower polls only what is new.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOG_NAME = "log.txt"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MAX_READ_BYTES = 1 << 20  # one answer of GET /logs at most (bytes)


@contextmanager
def capture_log(path: Path, *, level: int = logging.INFO) -> Iterator[logging.Handler]:
    """Append the process's log records at ``level`` or above to ``path`` while inside.

    The root logger is lowered to ``level`` for the duration if it was set higher (its
    other handlers keep their own levels), and restored afterwards.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    previous = root.level
    if root.level == logging.NOTSET or root.level > level:
        root.setLevel(level)
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        handler.close()


def read_log(path: Path, *, offset: int = 0, limit: int = MAX_READ_BYTES) -> tuple[bytes, int]:
    """The log's bytes from ``offset`` (at most ``limit``) and the offset after them.

    A log that does not exist yet reads as empty at offset 0; an offset past the end reads
    as empty at the end. A read stops after the last whole line it holds (unless that line
    alone is longer than ``limit``), so a follower never gets half a line.
    """
    if not path.is_file():
        return b"", 0
    with path.open("rb") as f:
        size = f.seek(0, 2)
        start = min(max(offset, 0), size)
        f.seek(start)
        data = f.read(min(limit, size - start))
    if data and not data.endswith(b"\n") and start + len(data) < size:
        cut = data.rfind(b"\n")
        if cut >= 0:
            data = data[: cut + 1]
    return data, start + len(data)

"""Ranks 1..N-1 of a job on several devices: ``python -m runtime.training.rank RUN.json``.

Started by rank 0 (``runtime.training.distributed.launch``) with torchrun's variables in the
environment (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE) and the job in RUN.json. The process
dies with its parent (Linux ``PR_SET_PDEATHSIG``; elsewhere, and as a second guard, a watchdog
on the parent's pid), ignores SIGINT and SIGTERM (rank 0 handles them and stops every rank),
runs the training loop as its rank and exits: 0 when training ended, stopped or not; 1 after
writing its reason for rank 0 when it raised.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1  # linux/prctl.h
WATCHDOG_INTERVAL_S = 1.0


def main(argv: list[str]) -> int:
    """Run this rank of the job described by ``argv[1]`` (RUN.json); returns the exit code."""
    run_file = Path(argv[1])
    rank = int(os.environ["RANK"])
    _die_with_parent(json.loads(run_file.read_text())["parent_pid"])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.WARNING, format=f"rank {rank}: %(levelname)s %(name)s: %(message)s"
    )
    # Deferred: the guards above are up before torch takes seconds to import.
    from runtime.training import distributed
    from runtime.training.loop import train_rank

    job = distributed.RankJob.read(run_file)
    try:
        ranks = distributed.join(
            job,
            rank=rank,
            master_addr=os.environ["MASTER_ADDR"],
            master_port=int(os.environ["MASTER_PORT"]),
        )
        train_rank(job, ranks)
    except BaseException as exc:  # record the reason for rank 0, then exit with an error
        logging.getLogger(__name__).exception("rank %d failed", rank)
        distributed.record_failure(Path(job.run_dir), rank, exc)
        return 1
    finally:
        distributed.leave()
    return 0


def _die_with_parent(parent_pid: int) -> None:
    """End this process when its parent (rank 0) ends, however that ends."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent was gone before the signal was armed
        os._exit(1)
    threading.Thread(
        target=_watch_parent, args=(parent_pid,), name="spartan-parent-watchdog", daemon=True
    ).start()


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(WATCHDOG_INTERVAL_S)
        if os.getppid() != parent_pid:
            os._exit(1)


if __name__ == "__main__":
    code = main(sys.argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # no interpreter teardown: nothing left to wait for

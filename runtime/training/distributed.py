"""Jobs on several devices: one job as ``resources.devices`` torch.distributed ranks on one
worker machine, with the masks checked to be identical on every rank.

The training loop is the one of ``runtime.training.loop`` on every rank; this module gives it
the collective steps (``Ranks``), starts and reaps the rank processes (``launch``) and is the
other ranks' side of that (``join``, used by ``runtime.training.rank``). On one device
``SINGLE`` makes every collective step a no-op and nothing here runs.

- Processes. Rank 0 runs in the calling process (the Celery pool child running the task, or
  ``spartan train``), so the job's hooks (progress, stop requests, epoch records, the lease
  heartbeat) work unchanged and the task stays the unit of dispatch: one task per job, holding
  all its devices. Ranks 1..N-1 are ``python -m runtime.training.rank RUN.json`` subprocesses
  (a Celery prefork child is daemonic, and multiprocessing refuses to start children there)
  with torchrun's variables in their environment (MASTER_ADDR=127.0.0.1, MASTER_PORT: the
  TCPStore rank 0 opened on a free port, RANK, LOCAL_RANK, WORLD_SIZE) and the spec, settings
  and paths in RUN.json, in a private temporary folder.
- Devices (``spartan_core.device``). NCCL on CUDA with one GPU per rank: rank r uses ``cuda:r``
  of the GPUs the worker sees (``CUDA_VISIBLE_DEVICES`` chooses them); more ranks than GPUs is
  an error at ``resources.devices``. gloo on CPU, each rank with cpus // N torch threads.
  Control messages (stop flags, mask hashes, RNG states, costs) go over gloo either way.
- Data and gradients. ``training.batch_size`` is the global batch: every rank takes its equal
  slice of each batch of the one seeded, epoch-dependent order (``runtime.datasets``), so the
  steps per epoch, the schedules and resume-by-batch are those of one device. The model is
  wrapped in DistributedDataParallel, which averages the gradients over the ranks. BatchNorm
  normalises with each rank's batch statistics (plain DDP, no SyncBatchNorm); the running
  statistics evaluated and saved are rank 0's.
- Identical masks. Every rank starts from rank 0's parameters and buffers (broadcast before the
  Sparsifier attaches) and prices the layers with rank 0's cost-model answers
  (``SharedCosts``: a cost model that measures the device, ``profiled``, measures once); the
  all-reduced gradients then give every rank the same optimizer step, and the Sparsifier's mask
  update is a deterministic function of the weights and the step, so every rank computes the
  same masks. That is checked, not assumed: at each epoch end and when training ends, every
  rank hashes its masks (``stats.masks_sha256``), the hashes are gathered, and any difference
  fails the job (``MasksDiffer``: "masks differ across ranks at epoch E: rank 0 ..., rank 1
  ..."). ``metrics.json`` lists the final hashes in rank order (``mask_sha256``).
- Rank 0 decides. Progress reports, stop requests (cancel, preempt) and the time limit are
  decided on rank 0 and broadcast after every step (one small broadcast), so all ranks stop at
  the same step. Rank 0 alone evaluates (the others wait for the outcome), writes checkpoints,
  finalizes, deploys and writes the artifacts; the other ranks exit once training is over.
- Checkpoints. Written by rank 0, with every rank's RNG states and epoch sums gathered into
  them, and read by every rank, so a resumed N-rank run is bit-identical on CPU to an
  uninterrupted one. A checkpoint of another number of devices is refused
  (``resources.devices``).
- Failures. A rank that raises writes its reason into the run folder and exits; its peers'
  next collective fails (the connection closed) and rank 0 raises ``RankFailed`` with that
  reason ("rank 1 failed: ValueError: ..."); whatever ends rank 0 ends the other ranks too
  (killed). Collectives time out after ``PROCESS_GROUP_TIMEOUT``, so nothing waits forever.
  Ranks 1..N-1 die with rank 0's process (Linux ``PR_SET_PDEATHSIG``, and a watchdog on their
  parent's pid), so a killed worker leaves no orphan and the job resumes from its checkpoint
  like any other (reclaim, redelivery) to the result of an uninterrupted run. They ignore
  SIGINT and SIGTERM: Ctrl-C and preemption are rank 0's to handle (checkpoint, stop all).

Several machines (not built). The ranks rendezvous the way torchrun's do, so spanning nodes
needs what torchrun adds: MASTER_ADDR set to node 0's reachable address and MASTER_PORT a port
open between the nodes (not 127.0.0.1 and a free local port); per node ``nproc_per_node``
local ranks with RANK = node_rank * nproc_per_node + LOCAL_RANK and ``cuda:LOCAL_RANK``;
something on every node to start its ranks for the job at the same time (gang scheduling: e.g.
a per-node agent, or a Celery task per node on a queue of the job, or torchrun's c10d
rendezvous with ``--nnodes`` and ``--node-rank``); the checkpoint and data on storage every
node reads; failure reasons through the TCPStore rather than files; and, since a parent-death
signal does not cross machines, orphaned ranks ended by the process-group timeout or a store
heartbeat.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from runtime.checkpoints import atomic_write_json
from runtime.training.stats import masks_sha256
from spartan.settings import Settings
from spartan.spec import JobSpec
from spartan_core.costs import CostModel, LayerCost, price_targets
from spartan_core.device import cpu_threads_per_rank, distributed_backend, rank_device
from spartan_core.layers import MaskTarget

log = logging.getLogger(__name__)

# A collective waiting longer than this fails (rank 0 evaluating alone must fit in it).
PROCESS_GROUP_TIMEOUT = timedelta(minutes=30)
START_TIMEOUT_S = 600.0  # for ranks 1..N-1 to start (import torch) and join
FAILURE_GRACE_S = 10.0  # after a broken collective, how long rank 0 waits for the reason
EXIT_TIMEOUT_S = 60.0  # for ranks 1..N-1 to exit after training
RANK_MODULE = "runtime.training.rank"
RUN_FILE = "run.json"
# What rank 0 broadcasts after every step and around its evaluations; the loop's stop reasons.
DECISIONS: tuple[str | None, ...] = (None, "cancel", "preempt", "time_limit")


class RankFailed(RuntimeError):
    """Another rank of the job failed; the message gives its reason first."""


class MasksDiffer(RuntimeError):
    """The ranks' masks are not bit-identical."""


@dataclass
class Ranks:
    """This process's place among the job's ranks, and the collective steps of the loop.

    Every method is a collective (all ranks call it, in the same order) and a plain local
    step when ``world_size`` is 1.

    Attributes:
        rank: this process's rank (0 reports, evaluates, checkpoints and finishes).
        world_size: the number of ranks.
        device: where this rank trains (None: the caller's choice, on one device).
        control: the gloo group for control messages (None: the default group).
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device | None = None
    control: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def decide(self, decide: Callable[[], str | None]) -> str | None:
        """Rank 0's decision (one of ``DECISIONS``; ``decide`` runs on rank 0 only), on all."""
        if not self.distributed:
            return decide()
        code = torch.zeros(1, dtype=torch.int64)
        if self.is_main:
            code[0] = DECISIONS.index(decide())
        dist.broadcast(code, src=0, group=self.control)
        return DECISIONS[int(code[0])]

    def sync_module(self, model: nn.Module) -> None:
        """Give every rank rank 0's parameters and buffers."""
        if not self.distributed:
            return
        with torch.no_grad():
            for tensor in (*model.parameters(), *model.buffers()):
                dist.broadcast(tensor.detach(), src=0)

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to train through: DistributedDataParallel over ``model`` (rank
        statistics in the buffers, see the module docstring), or ``model`` itself."""
        if not self.distributed:
            return model
        assert self.device is not None
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)

    def gather(self, value: Any) -> list[Any] | None:
        """Every rank's ``value`` in rank order on rank 0 (None on the others)."""
        if not self.distributed:
            return [value]
        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(value, out, dst=0, group=self.control)
        return out

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (picklable values)."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over the ranks (a CPU copy; ``tensor`` itself on one rank)."""
        if not self.distributed:
            return tensor
        total = tensor.detach().to("cpu", copy=True)
        dist.all_reduce(total, group=self.control)
        return total

    def check_masks(self, masks: Mapping[str, torch.Tensor], *, epoch: int) -> list[str]:
        """Every rank's mask hash (``masks_sha256``) in rank order, checked to be equal.

        Raises:
            MasksDiffer: on every rank, when some rank's masks differ.
        """
        own = masks_sha256(masks)
        if not self.distributed:
            return [own]
        mine = torch.tensor(list(bytes.fromhex(own)), dtype=torch.uint8)  # (32,)
        every = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(every, mine, group=self.control)
        hashes = [bytes(t.tolist()).hex() for t in every]
        if len(set(hashes)) > 1:
            listed = ", ".join(f"rank {r} {h[:16]}.." for r, h in enumerate(hashes))
            raise MasksDiffer(f"masks differ across ranks at epoch {epoch}: {listed}")
        return hashes


SINGLE = Ranks()


class SharedCosts:
    """A cost model that prices as rank 0's did: the Sparsifier's view of it on every rank.

    On rank 0 (``recording``) it asks the real cost model and records each answer, a
    ValueError included; the answers are broadcast, and on the other ranks (``replaying``) the
    same questions get them back. A cost model that measures on the device thus measures once,
    and every rank's Sparsifier gets the same costs.
    """

    def __init__(
        self,
        name: str,
        unit: str,
        *,
        inner: CostModel | None = None,
        answers: dict[tuple[Any, ...], tuple[str, Any]] | None = None,
    ) -> None:
        self.name = name
        self.unit = unit
        self.inner = inner
        self.answers: dict[tuple[Any, ...], tuple[str, Any]] = answers or {}

    @classmethod
    def recording(cls, inner: CostModel) -> SharedCosts:
        return cls(inner.name, inner.unit, inner=inner)

    @classmethod
    def replaying(
        cls, like: CostModel, answers: dict[tuple[Any, ...], tuple[str, Any]]
    ) -> SharedCosts:
        return cls(like.name, like.unit, answers=answers)

    def layer_costs(
        self, model: nn.Module, targets: Sequence[MaskTarget], block_shape: tuple[int, int]
    ) -> dict[str, LayerCost]:
        key = ("blocks", tuple(block_shape), tuple(t.name for t in targets))
        return self._answer(key, lambda inner: inner.layer_costs(model, targets, block_shape))

    def nm_layer_costs(
        self, model: nn.Module, targets: Sequence[MaskTarget], nm: tuple[int, int]
    ) -> dict[str, LayerCost]:
        key = ("nm", tuple(nm), tuple(t.name for t in targets))
        return self._answer(key, lambda inner: price_targets(inner, model, targets, (1, 1), nm))

    def _answer(
        self, key: tuple[Any, ...], ask: Callable[[CostModel], dict[str, LayerCost]]
    ) -> dict[str, LayerCost]:
        if self.inner is None:
            kind, value = self.answers[key]  # the same Sparsifier asks the same questions
            if kind == "error":
                raise ValueError(value)
            return dict(value)
        try:
            costs = ask(self.inner)
        except ValueError as exc:
            self.answers[key] = ("error", str(exc))
            raise
        self.answers[key] = ("costs", dict(costs))
        return costs


# rank 0: starting and reaping the other ranks ---------------------------------------------
@dataclass(frozen=True)
class RankJob:
    """What the other ranks need to run the job (``RUN.json``)."""

    spec: dict[str, Any]
    settings: dict[str, Any]
    out_dir: str
    checkpoint_path: str | None
    owner: str | None
    device_type: str
    world_size: int
    parent_pid: int
    run_dir: str

    @classmethod
    def read(cls, path: Path) -> RankJob:
        return cls(**json.loads(path.read_text()))

    def job_spec(self) -> JobSpec:
        return JobSpec.model_validate(self.spec)

    def job_settings(self) -> Settings:
        return Settings.model_validate(self.settings)


@contextlib.contextmanager
def launch(
    spec: JobSpec,
    *,
    settings: Settings,
    out_dir: Path,
    checkpoint_path: Path | None,
    owner: str | None,
    device_type: str,
) -> Iterator[Ranks]:
    """Start ranks 1..N-1 of ``spec`` and join them as rank 0; yields rank 0's ``Ranks``.

    On leaving, the other ranks are waited for (they exit when training ends) or, when the
    block raised, killed. An error of a broken collective becomes ``RankFailed`` with the
    reason of the rank that failed.

    Raises:
        ValueError: at ``resources.devices`` for more ranks than visible GPUs.
        RankFailed: a rank failed to start or failed in training.
    """
    world = spec.resources.devices
    device = rank_device(0, world, device_type)
    if dist.is_initialized():
        raise RuntimeError("a torch.distributed process group is already set up here")
    run_dir = Path(tempfile.mkdtemp(prefix="spartan-ranks-"))
    threads = torch.get_num_threads()
    procs: dict[int, subprocess.Popen[bytes]] = {}
    try:
        store = dist.TCPStore(
            "127.0.0.1", 0, world, is_master=True, timeout=PROCESS_GROUP_TIMEOUT,
            wait_for_workers=False,
        )  # fmt: skip
        job = RankJob(
            spec=spec.model_dump(mode="json"),
            settings=settings.model_dump(mode="json"),
            out_dir=str(out_dir),
            checkpoint_path=None if checkpoint_path is None else str(checkpoint_path),
            owner=owner,
            device_type=device_type,
            world_size=world,
            parent_pid=os.getpid(),
            run_dir=str(run_dir),
        )
        atomic_write_json(run_dir / RUN_FILE, job.__dict__)
        for rank in range(1, world):
            procs[rank] = _start_rank(rank, world, run_dir, port=store.port)
        _wait_joined(store, procs, run_dir)
        torch.set_num_threads(cpu_threads_per_rank(world))
        ranks = _init_group(0, world, store, device)
        try:
            yield ranks
        except BaseException as exc:
            failure = _failure(procs, run_dir, wait_s=FAILURE_GRACE_S if _broken(exc) else 0.0)
            if failure is not None:
                raise failure from exc
            raise
        _wait_exited(procs, run_dir)
    finally:
        _kill(procs)
        if dist.is_initialized():
            dist.destroy_process_group()
        torch.set_num_threads(threads)
        shutil.rmtree(run_dir, ignore_errors=True)


def _start_rank(rank: int, world: int, run_dir: Path, *, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world),
    }
    # Started from this (the training) thread: the rank's parent-death signal follows it.
    return subprocess.Popen(
        [sys.executable, "-m", RANK_MODULE, str(run_dir / RUN_FILE)], env=env, close_fds=True
    )


def _wait_joined(
    store: dist.TCPStore, procs: Mapping[int, subprocess.Popen[bytes]], run_dir: Path
) -> None:
    """Wait until every rank has connected to the store; a rank that exits first fails."""
    keys = [_joined_key(rank) for rank in procs]
    deadline = time.monotonic() + START_TIMEOUT_S
    while not store.check(keys):
        failure = _failure(procs, run_dir, wait_s=0.0)
        if failure is not None:
            raise failure
        if time.monotonic() > deadline:
            raise RankFailed(f"ranks did not start within {START_TIMEOUT_S:.0f} s")
        time.sleep(0.05)


def _wait_exited(procs: Mapping[int, subprocess.Popen[bytes]], run_dir: Path) -> None:
    """After training: wait for the other ranks to exit; a failure is logged (the run is
    complete: rank 0 has what it needs)."""
    deadline = time.monotonic() + EXIT_TIMEOUT_S
    for rank, proc in procs.items():
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("rank %d did not exit within %.0f s; killing it", rank, EXIT_TIMEOUT_S)
            continue
        if proc.returncode != 0:
            log.warning("rank %d: %s", rank, _reason(rank, proc, run_dir))


def _kill(procs: Mapping[int, subprocess.Popen[bytes]]) -> None:
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()  # nothing to save there: checkpoints are rank 0's
    for proc in procs.values():
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)


def _failure(
    procs: Mapping[int, subprocess.Popen[bytes]], run_dir: Path, *, wait_s: float
) -> RankFailed | None:
    """The failure of a rank that exited with an error, waiting up to ``wait_s`` for one; a
    rank's own error is preferred to one it got from a broken collective."""
    deadline = time.monotonic() + wait_s
    while True:
        failed = {r: p for r, p in procs.items() if p.poll() is not None and p.returncode != 0}
        if failed or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    if not failed:
        return None
    reasons = {rank: _read_failure(rank, run_dir) for rank in failed}
    own = [r for r in failed if not (reasons[r] or {}).get("broken", False)]
    rank = min(own or failed)
    reason = reasons[rank]
    text = _reason(rank, failed[rank], run_dir)
    detail = "" if reason is None else f"\n\nrank {rank} traceback:\n{reason['traceback']}"
    return RankFailed(text + detail)


def _reason(rank: int, proc: subprocess.Popen[bytes], run_dir: Path) -> str:
    saved = _read_failure(rank, run_dir)
    if saved is not None:
        return f"rank {rank} failed: {saved['reason']}"
    code = proc.returncode
    how = f"signal {-code}" if code is not None and code < 0 else f"code {code}"
    return f"rank {rank} failed: its process exited with {how} (killed, out of memory or crashed)"


def _read_failure(rank: int, run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / _failure_file(rank)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _broken(exc: BaseException) -> bool:
    """Whether ``exc`` looks like a collective broken by another rank (not this rank's own)."""
    if isinstance(exc, dist.DistError | RankFailed):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        mark in text for mark in ("Connection closed", "Connection reset", "gloo", "NCCL")
    )


# every rank ------------------------------------------------------------------------------
def _init_group(rank: int, world: int, store: dist.Store, device: torch.device) -> Ranks:
    backend = distributed_backend(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend, store=store, rank=rank, world_size=world, timeout=PROCESS_GROUP_TIMEOUT
    )
    control = dist.new_group(backend="gloo") if backend != "gloo" else None
    return Ranks(rank=rank, world_size=world, device=device, control=control)


def join(job: RankJob, *, rank: int, master_addr: str, master_port: int) -> Ranks:
    """Ranks 1..N-1: connect to rank 0's store, announce this rank, set up the group."""
    device = rank_device(rank, job.world_size, job.device_type)
    torch.set_num_threads(cpu_threads_per_rank(job.world_size))
    store = dist.TCPStore(
        master_addr, master_port, job.world_size, is_master=False, timeout=PROCESS_GROUP_TIMEOUT
    )
    store.set(_joined_key(rank), "1")
    return _init_group(rank, job.world_size, store, device)


def leave() -> None:
    """Tear down this process's process group, if any."""
    if dist.is_initialized():
        dist.destroy_process_group()


def record_failure(run_dir: Path, rank: int, exc: BaseException) -> None:
    """Write why this rank failed where rank 0 looks (``RankFailed``)."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    reason = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    atomic_write_json(
        run_dir / _failure_file(rank),
        {"reason": reason[:500], "traceback": traceback.format_exc(), "broken": _broken(exc)},
    )


def _joined_key(rank: int) -> str:
    return f"spartan/joined/{rank}"


def _failure_file(rank: int) -> str:
    return f"rank{rank}.failed.json"

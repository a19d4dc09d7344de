"""``run_training``: the phases of one run, from the job spec to the artifacts.

See the package docstring (``runtime.training``) for what a run does and guarantees. On several
devices every rank runs this loop; its collective steps are ``distributed.Ranks``' (no-ops on
one device) and rank 0 alone reports, evaluates, checkpoints and finishes.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch

from runtime.checkpoints import load_checkpoint_state
from runtime.datasets import train_loader
from runtime.progress import ProgressMeter
from runtime.training import distributed
from runtime.training.distributed import SINGLE, Ranks, SharedCosts
from runtime.training.evaluation import evaluate, logits_of
from runtime.training.finish import finish_run
from runtime.training.schedule import make_optimizer
from runtime.training.setup import RunSetup, build_run
from runtime.training.state import TrainModules, TrainState, rank_state, restore_run, save_run
from runtime.training.stats import mask_stats
from runtime.validation import check_devices
from spartan.settings import Settings
from spartan.spec import JobSpec
from spartan_core import Sparsifier
from spartan_core.device import default_device

log = logging.getLogger(__name__)

StopReason = Literal["cancel", "preempt"]
T = TypeVar("T")
ProgressFn = Callable[[dict[str, Any]], None]
StopFn = Callable[[], "StopReason | None"]


class JobTimeLimitExceeded(RuntimeError):
    """The job trained longer than ``resources.time_limit_s`` (a checkpoint was written)."""


@dataclass
class TrainHooks:
    """How a run reports and is stopped.

    Attributes:
        progress: called with a progress dict at a bounded rate (and at phase changes).
        stop: polled after every step and evaluation batch; returns ``"cancel"``,
            ``"preempt"`` or None.
        epoch: called with each epoch's record (the entry appended to ``history``) when the
            epoch's evaluation is done.
    """

    progress: ProgressFn | None = None
    stop: StopFn | None = None
    epoch: ProgressFn | None = None


@dataclass(frozen=True)
class TrainResult:
    """The outcome of ``run_training``.

    Attributes:
        status: ``succeeded``, ``cancelled`` or ``preempted`` (a checkpoint was written).
        metrics: the metrics written to ``metrics.json`` (succeeded only).
        artifacts: artifact name -> path (succeeded only).
    """

    status: Literal["succeeded", "cancelled", "preempted"]
    metrics: dict[str, Any] | None = None
    artifacts: dict[str, Path] | None = None


def run_training(
    spec: JobSpec,
    *,
    out_dir: Path,
    checkpoint_path: Path | None,
    settings: Settings,
    hooks: TrainHooks | None = None,
    owner: str | None = None,
    device: torch.device | None = None,
) -> TrainResult:
    """Train ``spec`` to its sparsity target and write the artifacts into ``out_dir``.

    Args:
        spec: the job specification.
        out_dir: where the artifacts go.
        checkpoint_path: the checkpoint file to resume from (if it exists) and to write;
            None disables checkpoints.
        settings: data roots, progress interval and checkpoint default.
        hooks: progress and stop callbacks.
        owner: the job's owner (to resolve an upload id in ``model.checkpoint``).
        device: where to train (default: CUDA when present, else CPU); with
            ``resources.devices`` > 1 its type (rank r uses ``cuda:r`` on CUDA).

    Raises:
        ValueError: for a spec that cannot run (a ``FieldError`` naming the field) or a
            checkpoint written for another specification.
        JobTimeLimitExceeded: past ``resources.time_limit_s``.
        distributed.RankFailed: another rank failed (its reason first in the message).
        distributed.MasksDiffer: the ranks' masks were not identical.
    """
    device = device or default_device()
    hooks = hooks or TrainHooks()
    if spec.resources.devices == 1:
        return _run_rank(spec, settings, hooks, checkpoint_path, out_dir, owner, device, SINGLE)
    check_devices(spec)
    with distributed.launch(
        spec,
        settings=settings,
        out_dir=out_dir,
        checkpoint_path=checkpoint_path,
        owner=owner,
        device_type=device.type,
    ) as ranks:
        assert ranks.device is not None
        return _run_rank(
            spec, settings, hooks, checkpoint_path, out_dir, owner, ranks.device, ranks
        )


def train_rank(job: distributed.RankJob, ranks: Ranks) -> None:
    """Rank 1..N-1 of a job on several devices (``runtime.training.rank``): the same loop,
    without hooks; it returns once training has ended or stopped."""
    assert ranks.device is not None
    checkpoint = None if job.checkpoint_path is None else Path(job.checkpoint_path)
    _run_rank(
        job.job_spec(),
        job.job_settings(),
        TrainHooks(),
        checkpoint,
        Path(job.out_dir),
        job.owner,
        ranks.device,
        ranks,
    )


def _run_rank(
    spec: JobSpec,
    settings: Settings,
    hooks: TrainHooks,
    checkpoint_path: Path | None,
    out_dir: Path,
    owner: str | None,
    device: torch.device,
    ranks: Ranks,
) -> TrainResult:
    run = _Run(spec, settings, hooks, checkpoint_path, device, ranks)
    return run.run(build_run(spec, settings, owner=owner, device=device), out_dir)


class _Stop(Exception):
    def __init__(self, reason: StopReason) -> None:
        super().__init__(reason)
        self.reason = reason


class _Run:
    """One run of ``run_training`` on one rank: its hooks, the clock, and the phases in order."""

    def __init__(
        self,
        spec: JobSpec,
        settings: Settings,
        hooks: TrainHooks,
        checkpoint_path: Path | None,
        device: torch.device,
        ranks: Ranks = SINGLE,
    ) -> None:
        self.spec = spec
        self.settings = settings
        self.hooks = hooks
        self.checkpoint_path = checkpoint_path
        self.device = device
        self.ranks = ranks
        self.start_time = time.monotonic()
        self.net: torch.nn.Module | None = None  # what trains: the model, or DDP over it

    def run(self, setup: RunSetup, out_dir: Path) -> TrainResult:
        """Dense evaluation or resume, training, then finishing; a stop ends any phase."""
        saved = load_checkpoint_state(self.checkpoint_path) if self.checkpoint_path else None
        state = TrainState.fresh(self.device)
        try:
            if saved is None:
                self._emit(self._progress("evaluating_dense", setup, state))
                state.dense = self._on_main(lambda: self._evaluate(setup))
            modules = self._attach(setup)
            if saved is not None:
                assert self.checkpoint_path is not None
                state = restore_run(
                    saved,
                    self.checkpoint_path,
                    self.spec,
                    modules,
                    self.device,
                    rank=self.ranks.rank,
                    world_size=self.ranks.world_size,
                )
                log.info("resumed at epoch %d, batch %d (step %d)", *_position(state))
        except _Stop as stop:
            return self._stopped(stop, state)
        try:
            self._train(setup, modules, state)
            hashes = self.ranks.check_masks(modules.sparsifier.masks(), epoch=state.epoch)
        except _Stop as stop:
            if stop.reason == "preempt":
                self._save(modules, state)
            return self._stopped(stop, state)
        if not self.ranks.is_main:
            return TrainResult(status="succeeded")  # rank 0 finishes
        try:
            return self._finish(setup, modules, state, out_dir, hashes)
        except _Stop as stop:
            # Once finalized, the last epoch-end checkpoint is the one to resume from.
            return self._stopped(stop, state)

    # phases -------------------------------------------------------------------------------
    def _attach(self, setup: RunSetup) -> TrainModules:
        """The Sparsifier, then the optimizer over the (now parametrized) model's parameters.

        On several devices every rank first takes rank 0's weights, and prices its layers
        with rank 0's cost model answers; training then goes through DDP (``self.net``).
        """
        self.ranks.sync_module(setup.model)
        sparsifier = self._sparsifier(setup)
        self.net = self.ranks.wrap(setup.model)
        optimizer, scheduler = make_optimizer(
            setup.model,
            self.spec.training,
            steps_per_epoch=setup.steps_per_epoch,
            total_steps=setup.total_steps,
        )
        return TrainModules(setup.model, optimizer, scheduler, setup.scaler, sparsifier)

    def _sparsifier(self, setup: RunSetup) -> Sparsifier:
        if not self.ranks.distributed:
            return Sparsifier(setup.model, setup.config, setup.total_steps)
        real = setup.config.cost_model
        if self.ranks.is_main:
            costs = SharedCosts.recording(real)
            sparsifier = Sparsifier(
                setup.model, replace(setup.config, cost_model=costs), setup.total_steps
            )
            self.ranks.broadcast(costs.answers)
            return sparsifier
        costs = SharedCosts.replaying(real, self.ranks.broadcast(None))
        return Sparsifier(setup.model, replace(setup.config, cost_model=costs), setup.total_steps)

    def _train(self, setup: RunSetup, modules: TrainModules, state: TrainState) -> None:
        meter = ProgressMeter(
            total_steps=setup.total_steps,
            interval_s=self.settings.progress_interval_s,
            device=self.device,
            start_step=state.step,
        )
        limit = self.spec.resources.time_limit_s
        modules.model.train()
        while state.epoch < self.spec.training.epochs:
            for images, labels in self._batches(setup, state):
                self._train_step(images, labels, setup, modules, state, meter)
                if self.ranks.is_main and meter.due(state.step):
                    self._report(meter, setup, modules, state)
                if setup.checkpoint_every and state.step % setup.checkpoint_every == 0:
                    self._save(modules, state)
                decision = self.ranks.decide(lambda: self._decide(state, limit))
                if decision == "time_limit":
                    self._save(modules, state)
                    if not self.ranks.is_main:
                        raise _Stop("cancel")  # rank 0 reports the limit
                    raise JobTimeLimitExceeded(
                        f"resources.time_limit_s: the job ran for {self._elapsed(state):.0f} s, "
                        f"past its limit of {limit} s (checkpoint at step {state.step})"
                    )
                if decision is not None:
                    raise _Stop(decision)  # type: ignore[arg-type]
            self._end_epoch(setup, modules, state)

    def _decide(self, state: TrainState, limit: float) -> str | None:
        """After a step (rank 0): the time limit first, then the stop hook."""
        if self._elapsed(state) > limit:
            return "time_limit"
        return self.hooks.stop() if self.hooks.stop is not None else None

    def _batches(
        self, setup: RunSetup, state: TrainState
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        yield from train_loader(
            setup.data.train,
            batch_size=self.spec.training.batch_size,
            seed=self.spec.training.seed,
            epoch=state.epoch,
            start_batch=state.batch,
            num_workers=self.spec.data.num_workers,
            pin_memory=self.device.type == "cuda",
            rank=self.ranks.rank,
            world_size=self.ranks.world_size,
        )

    def _train_step(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        setup: RunSetup,
        modules: TrainModules,
        state: TrainState,
        meter: ProgressMeter,
    ) -> None:
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        assert self.net is not None
        with setup.amp():
            logits = logits_of(self.net(images))  # (B / ranks, classes)
            loss = setup.criterion(logits, labels)
        modules.optimizer.zero_grad(set_to_none=True)
        modules.scaler.scale(loss).backward()
        modules.scaler.step(modules.optimizer)
        modules.scaler.update()
        modules.scheduler.step()
        try:
            modules.sparsifier.step()
        except FloatingPointError as exc:
            raise FloatingPointError(f"training.lr: {exc}; try a lower learning rate") from exc
        meter.update(loss, logits, labels)
        batch = labels.shape[0]
        correct = (logits.detach().argmax(dim=1) == labels).sum()
        state.epoch_sums += torch.stack(
            [loss.detach().double() * batch, correct.double(), torch.tensor(float(batch))]
        ).to(state.epoch_sums)
        state.batch += 1
        state.step += 1

    def _report(
        self, meter: ProgressMeter, setup: RunSetup, modules: TrainModules, state: TrainState
    ) -> None:
        stats = meter.report(state.step)
        if stats["loss"] is not None and not math.isfinite(stats["loss"]):
            raise FloatingPointError(
                f"training.lr: the loss became {stats['loss']} by step {state.step}; "
                "try a lower learning rate"
            )
        progress = self._progress("training", setup, state)
        if stats["throughput"] is not None:
            stats["throughput"] *= self.ranks.world_size  # rank 0's shard: 1 / N of each batch
        progress.update(stats)
        progress.update(mask_stats(modules.sparsifier, setup.maskable_weights))
        progress["lr"] = modules.scheduler.get_last_lr()[0]
        self._emit(progress)

    def _end_epoch(self, setup: RunSetup, modules: TrainModules, state: TrainState) -> None:
        self._emit(self._progress("evaluating", setup, state))
        val = self._on_main(lambda: self._evaluate(setup))
        loss_sum, correct, seen = self.ranks.sum(state.epoch_sums).tolist()  # all ranks' data
        if self.ranks.distributed:
            self.ranks.check_masks(modules.sparsifier.masks(), epoch=state.epoch + 1)
        if self.ranks.is_main:
            entry = {
                "epoch": state.epoch + 1,
                "step": state.step,
                "train_loss": loss_sum / seen if seen else None,
                "train_accuracy": correct / seen if seen else None,
                "val_top1": val["top1"],
                "val_top5": val["top5"],
                "val_loss": val["loss"],
                "lr": modules.scheduler.get_last_lr()[0],
            }
            entry.update(mask_stats(modules.sparsifier, setup.maskable_weights))
            state.history.append(entry)
            log.info("epoch %d: %s", state.epoch + 1, entry)
            if self.hooks.epoch is not None:
                self.hooks.epoch(entry)
        state.epoch += 1
        state.batch = 0
        state.epoch_sums.zero_()
        self._save(modules, state)

    def _finish(
        self,
        setup: RunSetup,
        modules: TrainModules,
        state: TrainState,
        out_dir: Path,
        mask_sha256: list[str],
    ) -> TrainResult:
        metrics, paths, final_masks = finish_run(
            self.spec,
            setup,
            modules.sparsifier,
            state,
            out_dir=out_dir,
            device=self.device,
            mask_sha256=mask_sha256,
            evaluate=lambda: self._evaluate(setup),
            emit=lambda phase: self._emit(self._progress(phase, setup, state)),
            elapsed=lambda: self._elapsed(state),
        )
        if self.checkpoint_path is not None:
            self.checkpoint_path.unlink(missing_ok=True)
        self._emit({**self._progress("done", setup, state), **final_masks})
        return TrainResult(status="succeeded", metrics=metrics, artifacts=paths)

    # helpers ------------------------------------------------------------------------------
    def _evaluate(self, setup: RunSetup) -> dict[str, float]:
        return evaluate(
            setup.model,
            setup.val_loader,
            device=self.device,
            num_classes=self.spec.model.num_classes,
            amp=setup.amp,
            poll=self._poll,
        )

    def _save(self, modules: TrainModules, state: TrainState) -> None:
        """Rank 0 writes the checkpoint, with every rank's own state gathered into it."""
        if self.checkpoint_path is None:
            return
        ranks = self.ranks.gather(rank_state(state)) if self.ranks.distributed else None
        if self.ranks.is_main:
            save_run(
                self.checkpoint_path,
                self.spec,
                modules,
                state,
                elapsed_s=self._elapsed(state),
                ranks=ranks,
            )

    def _on_main(self, work: Callable[[], T]) -> T:
        """``work()`` on rank 0 while the others wait; a stop inside it stops every rank.
        The other ranks get None (they use nothing rank 0 alone computes)."""
        if not self.ranks.distributed:
            return work()
        result: Any = None
        reason: str | None = None
        if self.ranks.is_main:
            try:
                result = work()
            except _Stop as stop:
                reason = stop.reason
        decided = self.ranks.decide(lambda: reason)
        if decided is not None:
            raise _Stop(decided)  # type: ignore[arg-type]
        return result

    def _stopped(self, stop: _Stop, state: TrainState) -> TrainResult:
        log.info("run stopped: %s at step %d", stop.reason, state.step)
        return TrainResult(status="cancelled" if stop.reason == "cancel" else "preempted")

    def _poll(self) -> None:
        if self.hooks.stop is not None:
            reason = self.hooks.stop()
            if reason is not None:
                raise _Stop(reason)

    def _emit(self, progress: dict[str, Any]) -> None:
        if self.hooks.progress is not None:
            self.hooks.progress(progress)

    def _elapsed(self, state: TrainState) -> float:
        return state.elapsed_before + (time.monotonic() - self.start_time)

    def _progress(self, phase: str, setup: RunSetup, state: TrainState) -> dict[str, Any]:
        return {
            "phase": phase,
            "step": state.step,
            "total_steps": setup.total_steps,
            "epoch": round(state.epoch + state.batch / max(setup.steps_per_epoch, 1), 3),
            "epochs": self.spec.training.epochs,
            "elapsed_s": round(self._elapsed(state), 3),
        }


def _position(state: TrainState) -> tuple[int, int, int]:
    return state.epoch, state.batch, state.step

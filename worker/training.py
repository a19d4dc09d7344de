"""The one training loop: a job specification in, a sparse model and its artifacts out.

Used by the Celery task (``worker.tasks``) and by ``spartan train SPEC.yaml --out DIR``; the
caller supplies hooks for progress and stop requests. The run:

1. builds the data splits, the model (random init or a checkpoint) and the cost model;
2. evaluates the dense model (top-1/top-5 on the validation split);
3. attaches the ``Sparsifier`` and trains ``epochs`` epochs: SGD or AdamW, a per-step learning
   rate with linear warm-up then cosine decay, label smoothing, mixed precision on CUDA; the
   Sparsifier is stepped after every optimizer step; after each epoch the masked model is
   evaluated into ``history``;
4. finalizes (weights baked, masking removed), evaluates the sparse model, deploys it on one
   validation batch (``cost_models.deploy``, phase ``deploying``: the kernel per layer measured
   on this device, into the cost report and ``model.sparse.safetensors``) and writes the
   artifacts (``worker.artifacts``).

Checkpoints (every ``checkpoint_every_steps`` steps and at each epoch end) hold everything the
rest of the run depends on: model, optimizer, scheduler, gradient scaler, sparsifier, RNG
states, the data position (epoch, next batch; the batch order is a function of the seed and
the epoch) and the metrics so far. A run started with an existing checkpoint resumes from it;
on CPU the result is bit-identical to an uninterrupted run.

Stop requests are polled after every step (the hook decides how often it really looks):
``cancel`` ends the run at once, ``preempt`` writes a checkpoint first. The job's time limit
(``resources.time_limit_s``, run time summed over attempts) also writes a checkpoint, then
raises ``JobTimeLimitExceeded``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from spartan.settings import Settings
from spartan.spec import JobSpec, resolve_data_path
from worker import artifacts as art
from worker.checkpoints import load_checkpoint_state, rng_state, save_checkpoint, set_rng_state
from worker.datasets import DataSplits, EpochBatchSampler, build_datasets, eval_loader, train_loader
from worker.models import create_model, load_checkpoint
from worker.progress import ProgressMeter
from worker.validation import resolve_cost_params

log = logging.getLogger(__name__)

StopReason = Literal["cancel", "preempt"]
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
    """

    progress: ProgressFn | None = None
    stop: StopFn | None = None


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


class _Stop(Exception):
    def __init__(self, reason: StopReason) -> None:
        super().__init__(reason)
        self.reason = reason


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
        device: where to train (default: CUDA when present, else CPU).

    Raises:
        ValueError: for a spec that cannot run (naming the field) or a checkpoint written for
            another specification.
        JobTimeLimitExceeded: past ``resources.time_limit_s``.
    """
    return _Trainer(
        spec, out_dir, checkpoint_path, settings, hooks or TrainHooks(), owner, device
    ).run()


def spec_fingerprint(spec: JobSpec) -> str:
    """A hash of everything that determines the training result (not name or resources)."""
    body = spec.model_dump(mode="json", exclude={"name", "resources"})
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def resolve_checkpoint_ref(ref: str, settings: Settings, owner: str | None) -> Path:
    """The file a ``model.checkpoint`` reference names: an upload id or a data-root path."""
    if ref.startswith("upl_"):
        from spartan.store import get_store

        upload = get_store(settings.database_url).get_upload(upload_id=ref, owner=owner)
        if upload is None:
            raise ValueError(f"model.checkpoint: no upload {ref!r}")
        return Path(upload.path)
    try:
        return resolve_data_path(ref, settings.data_roots)
    except ValueError as exc:
        raise ValueError(f"model.checkpoint: {exc}") from None


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Learning-rate multiplier at ``step``.

    Linear warm-up (step + 1) / W for step < W, then 1 (``constant``) or
    (1 + cos(pi * (step - W) / (T - W))) / 2 (``cosine``, reaching 0 at T).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(total_steps - warmup_steps, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup_steps, span) / span))


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Any,
    *,
    device: torch.device,
    num_classes: int,
    amp: Callable[[], contextlib.AbstractContextManager[Any]],
    poll: Callable[[], None] = lambda: None,
) -> dict[str, float]:
    """Top-1 and top-5 accuracy (fractions in [0, 1]) and mean loss on a validation loader."""
    was_training = model.training
    model.eval()
    k = min(5, num_classes)
    top1 = top5 = 0
    loss_sum = 0.0
    seen = 0
    criterion = nn.CrossEntropyLoss(reduction="sum")
    try:
        for images, labels in loader:
            poll()
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            with amp():
                logits = _logits(model(images))
            logits = logits.float()
            loss_sum += float(criterion(logits, labels))
            best = logits.topk(k, dim=1).indices  # (B, k)
            hits = best == labels[:, None]
            top1 += int(hits[:, 0].sum())
            top5 += int(hits.any(dim=1).sum())
            seen += labels.shape[0]
    finally:
        model.train(was_training)
    if seen == 0:
        raise ValueError("data: the validation split is empty")
    return {"top1": top1 / seen, "top5": top5 / seen, "loss": loss_sum / seen}


def _logits(output: Any) -> torch.Tensor:
    # Some torchvision models return (logits, aux) tuples in training mode.
    return output[0] if isinstance(output, tuple | list) else output


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


class _Trainer:
    """One run of ``run_training`` (state shared by its phases)."""

    def __init__(
        self,
        spec: JobSpec,
        out_dir: Path,
        checkpoint_path: Path | None,
        settings: Settings,
        hooks: TrainHooks,
        owner: str | None,
        device: torch.device | None,
    ) -> None:
        from spartan_core.device import default_device

        self.spec = spec
        self.out_dir = out_dir
        self.checkpoint_path = checkpoint_path
        self.settings = settings
        self.hooks = hooks
        self.owner = owner
        self.device = device or default_device()
        self.tspec = spec.training
        self.every = self.tspec.checkpoint_every_steps or settings.checkpoint_every_steps
        # position: the next batch to run is (epoch, batch); step counts completed steps
        self.epoch = 0
        self.batch = 0
        self.step = 0
        self.dense: dict[str, float] | None = None
        self.history: list[dict[str, Any]] = []
        self.elapsed_before = 0.0
        self.start_time = time.monotonic()
        self.last_progress: dict[str, Any] = {}

    # setup --------------------------------------------------------------------------------
    def _amp(self) -> contextlib.AbstractContextManager[Any]:
        from spartan_core.device import autocast

        if self.tspec.mixed_precision == "off":
            return contextlib.nullcontext()
        return autocast(self.device)

    def _build(self) -> None:
        import cost_models
        from spartan_core import Sparsifier, SparsifierConfig
        from spartan_core.device import needs_grad_scaler
        from spartan_core.layers import maskable_targets

        spec, tspec = self.spec, self.tspec
        _seed_everything(tspec.seed)
        self.data: DataSplits = build_datasets(spec, self.settings)
        self.steps_per_epoch = EpochBatchSampler.batches_per_epoch(
            len(self.data.train),  # type: ignore[arg-type]
            tspec.batch_size,
        )
        self.total_steps = self.steps_per_epoch * tspec.epochs
        model = create_model(spec.model)
        if spec.model.checkpoint is not None:
            path = resolve_checkpoint_ref(spec.model.checkpoint, self.settings, self.owner)
            report = load_checkpoint(model, path)
            log.info("loaded %d tensors from %s", len(report["loaded"]), path.name)
        self.model = model.to(self.device)
        self.maskable_weights = sum(t.numel for t in maskable_targets(model))
        self.cost_params = resolve_cost_params(spec, self.settings)
        self.cost_model = cost_models.get(spec.cost_model.name, **self.cost_params)
        sp = spec.sparsity
        self.config = SparsifierConfig(
            method=sp.method,
            target=sp.target,
            distribution=sp.distribution,
            block_shape=tuple(sp.block_shape),
            nm=None if sp.nm is None else tuple(sp.nm),
            beta_init=sp.beta_init,
            beta_max=sp.beta_max,
            **({} if sp.layer_floor is None else {"layer_floor": sp.layer_floor}),
            warmup_frac=sp.warmup_frac,
            finetune_frac=sp.finetune_frac,
            annealing=sp.annealing,
            include=tuple(sp.include),
            exclude=tuple(sp.exclude),
            cost_model=self.cost_model,
        )
        self._make_sparsifier = lambda: Sparsifier(self.model, self.config, self.total_steps)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=tspec.label_smoothing)
        self.scaler = torch.amp.GradScaler(
            self.device.type,
            enabled=tspec.mixed_precision == "auto" and needs_grad_scaler(self.device),
        )
        pin = self.device.type == "cuda"
        self.val_loader = eval_loader(
            self.data.val,
            batch_size=tspec.batch_size,
            num_workers=spec.data.num_workers,
            pin_memory=pin,
        )

    def _make_optimizer(self) -> None:
        tspec = self.tspec
        decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim > 1]
        no_decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim <= 1]
        groups = [
            {"params": decay, "weight_decay": tspec.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        if tspec.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                groups, lr=tspec.lr, momentum=tspec.momentum
            )
        else:
            self.optimizer = torch.optim.AdamW(groups, lr=tspec.lr)
        warmup = round(tspec.warmup_epochs * self.steps_per_epoch)
        total = self.total_steps

        def factor(step: int) -> float:
            return lr_factor(
                step, total_steps=total, warmup_steps=warmup, schedule=tspec.lr_schedule
            )

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    # hooks --------------------------------------------------------------------------------
    def _poll(self) -> None:
        if self.hooks.stop is not None:
            reason = self.hooks.stop()
            if reason is not None:
                raise _Stop(reason)

    def _emit(self, progress: dict[str, Any]) -> None:
        self.last_progress = progress
        if self.hooks.progress is not None:
            self.hooks.progress(progress)

    def _elapsed(self) -> float:
        return self.elapsed_before + (time.monotonic() - self.start_time)

    def _base_progress(self, phase: str) -> dict[str, Any]:
        return {
            "phase": phase,
            "step": self.step,
            "total_steps": self.total_steps,
            "epoch": round(self.epoch + self.batch / max(self.steps_per_epoch, 1), 3),
            "epochs": self.tspec.epochs,
            "elapsed_s": round(self._elapsed(), 3),
        }

    # checkpoints --------------------------------------------------------------------------
    def _save(self) -> None:
        if self.checkpoint_path is None:
            return
        save_checkpoint(
            self.checkpoint_path,
            {
                "fingerprint": spec_fingerprint(self.spec),
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "sparsifier": self.sparsifier.state_dict(),
                "rng": rng_state(),
                "position": {"epoch": self.epoch, "batch": self.batch, "step": self.step},
                "epoch_sums": self.epoch_sums.detach().cpu(),
                "dense": self.dense,
                "history": self.history,
                "elapsed_s": self._elapsed(),
            },
        )

    def _load(self, state: dict[str, Any]) -> None:
        if state.get("fingerprint") != spec_fingerprint(self.spec):
            raise ValueError(
                f"checkpoint: {self.checkpoint_path} was written for a different job "
                "specification; remove it or use another output folder"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.sparsifier.load_state_dict(state["sparsifier"])
        position = state["position"]
        self.epoch, self.batch, self.step = position["epoch"], position["batch"], position["step"]
        self.epoch_sums = state["epoch_sums"].to(self.device)
        self.dense = state["dense"]
        self.history = list(state["history"])
        self.elapsed_before = float(state["elapsed_s"])
        set_rng_state(state["rng"])
        log.info("resumed at epoch %d, batch %d (step %d)", self.epoch, self.batch, self.step)

    # phases -------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        self._build()
        state = load_checkpoint_state(self.checkpoint_path) if self.checkpoint_path else None
        try:
            if state is None:
                self._emit(self._base_progress("evaluating_dense"))
                self.dense = self._evaluate()
            self.sparsifier = self._make_sparsifier()
            self._make_optimizer()
            # (loss sum, correct, seen) of the current epoch, float64 for exact resumes
            self.epoch_sums = torch.zeros(3, dtype=torch.float64, device=self.device)
            if state is not None:
                self._load(state)
            self._train()
            return self._finish()
        except _Stop as stop:
            # Once finalized, the last epoch-end checkpoint is the one to resume from.
            live = hasattr(self, "epoch_sums") and not self.sparsifier.finalized
            if stop.reason == "preempt" and live:
                self._save()
            log.info("run stopped: %s at step %d", stop.reason, self.step)
            status = "cancelled" if stop.reason == "cancel" else "preempted"
            return TrainResult(status=status)

    def _evaluate(self) -> dict[str, float]:
        return evaluate(
            self.model,
            self.val_loader,
            device=self.device,
            num_classes=self.spec.model.num_classes,
            amp=self._amp,
            poll=self._poll,
        )

    def _train(self) -> None:
        tspec = self.tspec
        meter = ProgressMeter(
            total_steps=self.total_steps,
            interval_s=self.settings.progress_interval_s,
            device=self.device,
            start_step=self.step,
        )
        limit = self.spec.resources.time_limit_s
        self.model.train()
        while self.epoch < tspec.epochs:
            for images, labels in self._batches():
                self._train_step(images, labels, meter)
                if meter.due(self.step):
                    self._report(meter)
                if self.every and self.step % self.every == 0:
                    self._save()
                if self._elapsed() > limit:
                    self._save()
                    raise JobTimeLimitExceeded(
                        f"resources.time_limit_s: the job ran for {self._elapsed():.0f} s, "
                        f"past its limit of {limit} s (checkpoint at step {self.step})"
                    )
                self._poll()
            self._end_epoch()

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader = train_loader(
            self.data.train,
            batch_size=self.tspec.batch_size,
            seed=self.tspec.seed,
            epoch=self.epoch,
            start_batch=self.batch,
            num_workers=self.spec.data.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        yield from loader

    def _train_step(self, images: torch.Tensor, labels: torch.Tensor, meter: ProgressMeter) -> None:
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        with self._amp():
            logits = _logits(self.model(images))
            loss = self.criterion(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.sparsifier.step()
        meter.update(loss, logits, labels)
        batch = labels.shape[0]
        correct = (logits.detach().argmax(dim=1) == labels).sum()
        self.epoch_sums += torch.stack(
            [loss.detach().double() * batch, correct.double(), torch.tensor(float(batch))]
        ).to(self.epoch_sums)
        self.batch += 1
        self.step += 1

    def _report(self, meter: ProgressMeter) -> None:
        stats = meter.report(self.step)
        if stats["loss"] is not None and not math.isfinite(stats["loss"]):
            raise FloatingPointError(
                f"training.lr: the loss became {stats['loss']} by step {self.step}; "
                "try a lower learning rate"
            )
        progress = self._base_progress("training")
        progress.update(stats)
        progress.update(self._mask_stats())
        progress["lr"] = self.scheduler.get_last_lr()[0]
        self._emit(progress)

    def _mask_stats(self) -> dict[str, Any]:
        """Sparsity, cost fraction and beta of the current masks (from the Sparsifier)."""
        return _sparsifier_stats(self.sparsifier, self.maskable_weights)

    def _end_epoch(self) -> None:
        self._emit(self._base_progress("evaluating"))
        val = self._evaluate()
        loss_sum, correct, seen = self.epoch_sums.tolist()
        entry = {
            "epoch": self.epoch + 1,
            "step": self.step,
            "train_loss": loss_sum / seen if seen else None,
            "train_accuracy": correct / seen if seen else None,
            "val_top1": val["top1"],
            "val_top5": val["top5"],
            "val_loss": val["loss"],
            "lr": self.scheduler.get_last_lr()[0],
        }
        entry.update(self._mask_stats())
        self.history.append(entry)
        log.info("epoch %d: %s", self.epoch + 1, entry)
        self.epoch += 1
        self.batch = 0
        self.epoch_sums.zero_()
        self._save()

    def _finish(self) -> TrainResult:
        import cost_models

        self._emit(self._base_progress("finalizing"))
        masks = self.sparsifier.masks()
        mask_stats = self._mask_stats()
        self.sparsifier.finalize()
        final = self._evaluate()
        self._emit(self._base_progress("deploying"))
        deployment = self._deploy()
        sp = self.spec.sparsity
        report = cost_models.cost_report(
            self.model,
            self.cost_model,
            input_size=self.spec.model.input_size,
            block_shape=tuple(sp.block_shape),
            nm=None if sp.nm is None else tuple(sp.nm),
            masks=masks,
            deployment=deployment,
        )
        report_dict = report.to_dict()
        metrics = {
            "dense": self.dense,
            "final": {**final, **mask_stats},
            "history": self.history,
            "cost": report_dict.get("totals"),
            "steps": self.total_steps,
            "epochs": self.tspec.epochs,
            "train_time_s": round(self._elapsed(), 3),
            "device": str(self.device),
        }
        paths = art.write_artifacts(
            self.out_dir,
            model=self.model,
            masks=masks,
            cost_report=report,
            metrics=metrics,
            spec=self._resolved_spec(),
            deployment=deployment,
        )
        if self.checkpoint_path is not None:
            self.checkpoint_path.unlink(missing_ok=True)
        self._emit({**self._base_progress("done"), **mask_stats})
        return TrainResult(status="succeeded", metrics=metrics, artifacts=paths)

    def _deploy(self) -> dict[str, Any]:
        """Deploy the final model on one validation batch, measured on this device; returns the
        deploy report. The batch is the spec's, or the cost model's own ``batch_size`` where it
        predicts latency for one (``profiled``), so prediction and measurement compare."""
        import cost_models

        images, _ = next(iter(self.val_loader))
        batch = getattr(self.cost_model, "batch_size", None)
        if isinstance(batch, int) and batch > 0:
            repeats = -(-batch // images.shape[0])
            images = images.repeat(repeats, *[1] * (images.dim() - 1))[:batch]
        report = cost_models.deploy(self.model, images.to(self.device)).deploy_report
        totals = report["totals"]
        log.info(
            "deployed on %s at batch %d: %.3f ms dense, %.3f ms deployed (%.2fx), kernels %s",
            report["device"],
            report["batch_size"],
            totals["dense_ms"],
            totals["deployed_ms"],
            totals["speedup"] or 0.0,
            totals["kernels"],
        )
        return report

    def _resolved_spec(self) -> dict[str, Any]:
        body = self.spec.model_dump(mode="json")
        body["sparsity"]["beta_max"] = float(self.config.beta_max)
        body["sparsity"]["beta_init"] = float(self.config.beta_init)
        body["sparsity"]["layer_floor"] = float(self.config.layer_floor)
        body["training"]["checkpoint_every_steps"] = self.every
        body["cost_model"]["params"] = self.cost_params
        return body


def _sparsifier_stats(sparsifier: Any, maskable_weights: int) -> dict[str, Any]:
    """Weight sparsity over all maskable weights, kept cost fraction, scheduled f and beta."""
    kept = 0
    for layer in sparsifier.layers:
        r, c = layer.block_shape
        kept += int(layer.hard.sum()) * r * c
    removed = (
        sum(
            layer.n_entries * layer.block_shape[0] * layer.block_shape[1]
            for layer in sparsifier.layers
        )
        - kept
    )
    return {
        "sparsity": removed / maskable_weights,
        "cost_fraction": sparsifier.kept_cost_fraction(),
        "scheduled_cost_fraction": sparsifier.cost_fraction,
        "beta": sparsifier.beta,
    }

"""The training loop's state, and how it converts to and from a checkpoint.

A checkpoint is one ``torch.save`` dict (``runtime.checkpoints``): the state dicts of the model,
optimizer, scheduler, gradient scaler and sparsifier, the RNG states, and ``TrainState``: the
data position and the metrics so far. Restoring sets the RNG states last, so a resumed run
draws exactly the random numbers an uninterrupted one would.

A run on several devices (``runtime.training.distributed``) is saved by rank 0, with what
differs between ranks gathered from every rank (``rank_state``: RNG states and the epoch's
running sums, under ``ranks`` in rank order) and the number of ranks (``world_size``); every
rank restores its own part, and a checkpoint of another number of ranks is refused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from runtime.checkpoints import rng_state, save_checkpoint, set_rng_state
from spartan.errors import FieldError
from spartan.spec import JobSpec
from spartan_core import Sparsifier


def spec_fingerprint(spec: JobSpec) -> str:
    """A hash of everything that determines the training result (not name, resources or
    tracking)."""
    body = spec.model_dump(mode="json", exclude={"name", "resources", "tracking"})
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@dataclass
class TrainState:
    """Where a run is and what it has measured so far.

    Attributes:
        epoch, batch: the next batch to run (the batch order is a function of seed and epoch).
        step: completed optimizer steps.
        epoch_sums: (loss sum, correct, seen) of the current epoch, float64 for exact resumes.
        dense: the dense model's validation metrics (measured before masking).
        history: one entry per finished epoch.
        elapsed_before: run time of earlier attempts (s).
    """

    epoch_sums: torch.Tensor  # (3,)
    dense: dict[str, float] | None = None
    epoch: int = 0
    batch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    elapsed_before: float = 0.0

    @classmethod
    def fresh(cls, device: torch.device) -> TrainState:
        """The state of a run that starts from the beginning (the dense metrics to come)."""
        return cls(epoch_sums=torch.zeros(3, dtype=torch.float64, device=device))

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any], device: torch.device) -> TrainState:
        """The state a checkpoint holds (the inverse of ``to_checkpoint``)."""
        position = saved["position"]
        return cls(
            epoch_sums=saved["epoch_sums"].to(device),
            dense=saved["dense"],
            epoch=position["epoch"],
            batch=position["batch"],
            step=position["step"],
            history=list(saved["history"]),
            elapsed_before=float(saved["elapsed_s"]),
        )

    def to_checkpoint(self, *, elapsed_s: float) -> dict[str, Any]:
        """The checkpoint entries of this state, with the total run time so far."""
        return {
            "position": {"epoch": self.epoch, "batch": self.batch, "step": self.step},
            "epoch_sums": self.epoch_sums.detach().cpu(),
            "dense": self.dense,
            "history": self.history,
            "elapsed_s": elapsed_s,
        }


@dataclass
class TrainModules:
    """What trains: the modules whose state dicts a checkpoint holds."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    sparsifier: Sparsifier

    def state_dicts(self) -> dict[str, Any]:
        """Every module's state dict, keyed as in the checkpoint."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "sparsifier": self.sparsifier.state_dict(),
        }

    def load_state_dicts(self, saved: dict[str, Any]) -> None:
        """Load every module's state dict from a checkpoint."""
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        self.sparsifier.load_state_dict(saved["sparsifier"])


def rank_state(state: TrainState) -> dict[str, Any]:
    """What a checkpoint holds of each rank: its RNG states and its epoch sums."""
    return {"rng": rng_state(), "epoch_sums": state.epoch_sums.detach().cpu()}


def save_run(
    path: Path,
    spec: JobSpec,
    modules: TrainModules,
    state: TrainState,
    *,
    elapsed_s: float,
    ranks: list[dict[str, Any]] | None = None,
) -> None:
    """Write the run's checkpoint to ``path`` (atomically).

    Args:
        ranks: on several devices, every rank's ``rank_state`` in rank order (this process
            is rank 0); None on one device.
    """
    several = ranks is not None and len(ranks) > 1
    save_checkpoint(
        path,
        {
            "fingerprint": spec_fingerprint(spec),
            **modules.state_dicts(),
            "rng": ranks[0]["rng"] if ranks else rng_state(),
            **state.to_checkpoint(elapsed_s=elapsed_s),
            "world_size": len(ranks) if ranks else 1,
            **({"ranks": ranks} if several else {}),
        },
    )


def restore_run(
    saved: dict[str, Any],
    path: Path,
    spec: JobSpec,
    modules: TrainModules,
    device: torch.device,
    *,
    rank: int = 0,
    world_size: int = 1,
) -> TrainState:
    """Load a checkpoint into ``modules`` and the RNGs; returns the state it holds (with
    rank ``rank``'s own epoch sums and RNG states on several devices).

    Raises:
        FieldError: at ``checkpoint`` if it was written for another specification, at
            ``resources.devices`` if it was written by a run on another number of devices.
    """
    if saved.get("fingerprint") != spec_fingerprint(spec):
        raise FieldError(
            ("checkpoint",),
            f"{path} was written for a different job specification; remove it or use "
            "another output folder",
        )
    written = int(saved.get("world_size", 1))
    if written != world_size:
        raise FieldError(
            ("resources", "devices"),
            f"{path} was written by a run on {written} device(s), this run has {world_size}; "
            f"resume it with devices: {written}, or remove it to start again",
        )
    modules.load_state_dicts(saved)
    state = TrainState.from_checkpoint(saved, device)
    own = saved["ranks"][rank] if world_size > 1 else {"rng": saved["rng"]}
    if "epoch_sums" in own:
        state.epoch_sums = own["epoch_sums"].to(device)
    set_rng_state(own["rng"])
    return state

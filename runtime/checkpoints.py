"""Atomic files and training checkpoints.

A checkpoint is one ``torch.save`` dict of tensors and plain values (model, optimizer, scheduler,
gradient scaler and sparsifier state dicts, RNG states, data position, metrics so far). It is
written to a temporary file in the same folder, flushed to disk and renamed over the previous
one, so a worker killed mid-write leaves the last complete checkpoint in place. It is read back
with ``weights_only=True``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` through ``write(file)`` into a temporary sibling, then rename it over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file atomically (UTF-8)."""
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def atomic_write_json(path: Path, data: Any) -> None:
    """Write a JSON file atomically, indented, keys in insertion order."""
    atomic_write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Save a checkpoint dict atomically (adds the format version)."""
    state = {"version": CHECKPOINT_VERSION, **state}
    atomic_write(path, lambda handle: torch.save(state, handle))
    log.debug("checkpoint written: %s", path)


def load_checkpoint_state(path: Path) -> dict[str, Any] | None:
    """The checkpoint at ``path`` (tensors on the CPU), or None if there is none.

    Raises:
        ValueError: if the file exists but is not a checkpoint of this version.
    """
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"checkpoint: {path} is not a version {CHECKPOINT_VERSION} checkpoint")
    return state


def rng_state() -> dict[str, Any]:
    """The random generator states training depends on (torch CPU and CUDA, Python)."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": _python_state_to_lists(random.getstate()),
    }
    if torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states saved by ``rng_state``."""
    torch.set_rng_state(state["torch"])
    random.setstate(_python_state_from_lists(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state_to_lists(state: tuple[Any, ...]) -> list[Any]:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_state_from_lists(state: list[Any]) -> tuple[Any, ...]:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)

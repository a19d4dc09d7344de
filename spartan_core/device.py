"""Device handling in one place: which device to use, mixed precision, synchronisation, and
for jobs on several devices each rank's device, backend and CPU threads.

Every device-specific branch of the project lives here, so the rest of the code runs unchanged
on CUDA (with mixed precision) and on CPU.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Turn a user choice (``None``/``"auto"``, ``"cpu"``, ``"cuda:1"``...) into a device.

    Raises:
        ValueError: for an unknown device string, or CUDA asked for on a machine without it.
    """
    if device is None or device == "auto":
        return default_device()
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device: unknown device {device!r}") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} requested but CUDA is not available")
    return resolved


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The mixed-precision dtype used on ``device``, or ``None`` for full precision (CPU)."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextlib.contextmanager
def autocast(device: torch.device) -> Iterator[None]:
    """Mixed precision on CUDA (bfloat16 when supported, else float16); a null context on CPU."""
    dtype = autocast_dtype(device)
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def needs_grad_scaler(device: torch.device) -> bool:
    """Whether training on ``device`` needs a gradient scaler (float16 autocast does)."""
    return autocast_dtype(device) == torch.float16


def all_on_cpu(*tensors: torch.Tensor | None) -> bool:
    """Whether every given tensor (None skipped) lives in CPU memory: the native kernels'
    domain (spartan_core.native); elsewhere the PyTorch code runs."""
    return all(t is None or t.device.type == "cpu" for t in tensors)


def synchronize(device: torch.device) -> None:
    """Wait for queued work on ``device`` (a no-op on CPU); use before reading timers."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# several devices --------------------------------------------------------------------------
def distributed_backend(device: torch.device) -> str:
    """The torch.distributed backend for ranks on ``device``: NCCL on CUDA, gloo elsewhere."""
    return "nccl" if device.type == "cuda" else "gloo"


def rank_device(rank: int, world_size: int, device_type: str) -> torch.device:
    """The device of rank ``rank`` of ``world_size`` ranks on one machine.

    On CUDA rank r uses ``cuda:r`` of the GPUs this process sees (``CUDA_VISIBLE_DEVICES``
    chooses and orders them); on CPU every rank uses the CPU.

    Raises:
        ValueError: naming ``resources.devices`` when CUDA has fewer visible GPUs than ranks.
    """
    if device_type != "cuda":
        return torch.device(device_type)
    visible = torch.cuda.device_count()
    if world_size > visible:
        chosen = os.environ.get("CUDA_VISIBLE_DEVICES")
        where = "" if chosen is None else f" (CUDA_VISIBLE_DEVICES={chosen!r})"
        raise ValueError(
            f"resources.devices: {world_size} ranks need {world_size} GPUs, this worker sees "
            f"{visible}{where}"
        )
    return torch.device("cuda", rank)


def cpu_threads_per_rank(world_size: int) -> int:
    """Torch intra-op threads for each of ``world_size`` ranks sharing this machine's CPUs."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // world_size)

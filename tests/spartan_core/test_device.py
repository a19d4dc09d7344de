"""The device helper: device choice, mixed precision context, synchronisation."""

from __future__ import annotations

import pytest
import torch

from spartan_core.device import (
    autocast,
    autocast_dtype,
    default_device,
    needs_grad_scaler,
    resolve_device,
    synchronize,
)


def test_default_device_matches_availability() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert default_device().type == expected
    assert resolve_device(None) == default_device()
    assert resolve_device("auto") == default_device()


def test_cpu_runs_in_full_precision() -> None:
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu) is None
    assert not needs_grad_scaler(cpu)
    with autocast(cpu):
        out = torch.ones(2, 3) @ torch.ones(3, 2)
    assert out.dtype == torch.float32
    synchronize(cpu)  # a no-op, must not fail


def test_resolve_device_rejects_bad_names() -> None:
    with pytest.raises(ValueError, match="device"):
        resolve_device("not-a-device")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device"):
            resolve_device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")

"""Training and resuming a Sparsifier on tiny CNNs, shared by the Sparsifier tests."""

from __future__ import annotations

import io
from collections.abc import Callable

import torch
from torch import nn

from spartan_core import Sparsifier

Build = Callable[[], tuple[nn.Module, torch.optim.Optimizer, Sparsifier]]


def batches(n: int, channels: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` batches of six (channels, 8, 8) images with labels in 0..3."""
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(6, channels, 8, 8, generator=g), torch.randint(0, 4, (6,), generator=g))
        for _ in range(n)
    ]


def train(
    model: nn.Module,
    sparsifier: Sparsifier,
    optimizer: torch.optim.Optimizer,
    data: list[tuple[torch.Tensor, torch.Tensor]],
    each: Callable[[], None] | None = None,
) -> None:
    """One optimizer step and one ``sparsifier.step()`` per batch, then ``each()``."""
    model.train()
    for x, y in data:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        sparsifier.step()
        if each is not None:
            each()


def snapshot(sparsifier: Sparsifier) -> dict[str, torch.Tensor]:
    """Copies of every layer's masks (and N:M duals), keyed ``<parameter>.<buffer>``."""
    out = {}
    for layer in sparsifier.layers:
        for key in ("hard", "soft", "nm_dual"):
            buffer = getattr(layer, key)
            if buffer is not None:
                out[f"{layer.name}.{key}"] = buffer.clone()
    return out


def assert_resume_is_bit_identical(
    build: Build, data: list[tuple[torch.Tensor, torch.Tensor]], cut: int
) -> Sparsifier:
    """Training straight through and training to ``cut``, saving, restoring into a fresh
    build and training on give the same masks at every step; returns the resumed Sparsifier."""
    model, optimizer, sparsifier = build()
    straight: list[dict[str, torch.Tensor]] = []
    train(model, sparsifier, optimizer, data, lambda: straight.append(snapshot(sparsifier)))

    model, optimizer, sparsifier = build()
    train(model, sparsifier, optimizer, data[:cut])
    buffer = io.BytesIO()
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "sparsifier": sparsifier.state_dict(),
        },
        buffer,
    )
    del model, optimizer, sparsifier
    model, optimizer, sparsifier = build()
    state = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    sparsifier.load_state_dict(state["sparsifier"])
    assert sparsifier.current_step == cut
    resumed: list[dict[str, torch.Tensor]] = []
    train(model, sparsifier, optimizer, data[cut:], lambda: resumed.append(snapshot(sparsifier)))
    assert len(resumed) == len(data) - cut
    for expected, got in zip(straight[cut:], resumed, strict=True):
        assert expected.keys() == got.keys()
        for key in expected:
            assert torch.equal(expected[key], got[key]), key
    return sparsifier

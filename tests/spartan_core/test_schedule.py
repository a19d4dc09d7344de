"""Schedules of the cost fraction and beta, tested at their boundaries."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from spartan_core import Sparsifier, SparsifierConfig
from spartan_core.schedule import (
    Schedule,
    beta_at,
    cost_fraction_at,
    freeze_step,
    progress,
    warmup_steps,
)

T = 100
KW = {"total_steps": T, "target": 0.1, "warmup_frac": 0.2, "finetune_frac": 0.3}
BETA = {"total_steps": T, "beta_init": 1.0, "beta_max": 100.0, "finetune_frac": 0.3}


def test_boundary_steps() -> None:
    assert warmup_steps(T, 0.2, 0.3) == 20
    assert freeze_step(T, 0.3) == 70
    assert freeze_step(T, 0.0) == T
    assert warmup_steps(10, 0.0) == 0
    # warm-up never ends after the freeze
    assert warmup_steps(3, 0.4, 0.5) <= freeze_step(3, 0.5)


def test_a_run_schedule_at_its_boundaries() -> None:
    schedule = Schedule(T, 0.1, beta_init=1.0, beta_max=100.0, warmup_frac=0.2, finetune_frac=0.3)
    assert (schedule.warmup_steps, schedule.freeze_step) == (20, 70)
    assert schedule.cost_fraction(0) == 1.0 and schedule.beta(0) == 1.0
    assert schedule.cost_fraction(20) == 0.1 and schedule.cost_fraction(T) == 0.1
    assert schedule.beta(69) < 100.0 and schedule.beta(70) == schedule.beta(T) == 100.0
    nm = Schedule(T, 0.5, 1.0, 10.0, warmup_frac=0.2, finetune_frac=0.3, nm=(2, 4))
    assert (nm.nm_kept(0), nm.nm_kept(20), nm.nm_kept(T)) == (4.0, 2.0, 2.0)
    with pytest.raises(ValueError, match=r"^total_steps: "):
        Schedule(0, 0.1, 1.0, 10.0, warmup_frac=0.2, finetune_frac=0.2)


@pytest.mark.parametrize("annealing", ["linear", "cosine"])
def test_cost_fraction_boundaries(annealing: str) -> None:
    f = [cost_fraction_at(s, annealing=annealing, **KW) for s in range(T + 1)]
    assert f[0] == 1.0
    assert f[20] == 0.1  # end of warm-up
    assert f[70] == 0.1  # fine-tune start
    assert f[T] == 0.1  # end
    assert all(a >= b for a, b in itertools.pairwise(f))  # non-increasing
    assert all(0.1 < x < 1.0 for x in f[1:20])


def test_cost_fraction_formula() -> None:
    assert cost_fraction_at(5, annealing="linear", **KW) == pytest.approx(1 - 0.9 * 0.25)
    cosine = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.25))
    assert cost_fraction_at(5, annealing="cosine", **KW) == pytest.approx(cosine)
    assert cost_fraction_at(10, annealing="cosine", **KW) == pytest.approx(0.55)
    assert cost_fraction_at(0, total_steps=T, target=0.3, warmup_frac=0.0) == 0.3


@pytest.mark.parametrize("annealing", ["linear", "cosine"])
def test_beta_boundaries(annealing: str) -> None:
    b = [beta_at(s, annealing=annealing, **BETA) for s in range(T + 1)]
    assert b[0] == 1.0
    assert b[70] == 100.0  # fine-tune start
    assert b[T] == 100.0  # end
    assert all(x < y for x, y in itertools.pairwise(b[:70]))  # increasing before F
    # geometric: halfway through the progress curve beta is the geometric mean
    assert beta_at(35, annealing=annealing, **BETA) == pytest.approx(10.0)


def test_beta_linear_progress_is_geometric() -> None:
    assert beta_at(14, annealing="linear", **BETA) == pytest.approx(100.0**0.2)


def test_progress_curves() -> None:
    for kind in ("linear", "cosine"):
        assert progress(0.0, kind) == 0.0
        assert progress(1.0, kind) == 1.0
        assert progress(2.0, kind) == 1.0
    with pytest.raises(ValueError, match="annealing"):
        progress(0.5, "exponential")


@pytest.mark.parametrize("total", [0, -3, 2.5, True])
def test_bad_total_steps(total: object) -> None:
    with pytest.raises(ValueError, match="total_steps"):
        freeze_step(total, 0.2)  # type: ignore[arg-type]


def test_sparsifier_follows_the_schedule() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    config = SparsifierConfig(
        target=0.25,
        warmup_frac=0.2,
        finetune_frac=0.2,
        beta_init=1.0,
        beta_max=20.0,
        annealing="linear",
    )
    sparsifier = Sparsifier(model, config, total_steps=10)
    # step 0: f = 1, every mask is exactly one and nothing is NaN
    assert sparsifier.cost_fraction == 1.0
    assert sparsifier.beta == 1.0
    for mask in sparsifier.mask_values().values():
        assert torch.equal(mask, torch.ones_like(mask))
    x = torch.randn(4, 6)
    model(x).sum().backward()
    for p in model.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    seen = []
    for _ in range(10):
        sparsifier.step()
        seen.append((sparsifier.current_step, sparsifier.frozen, sparsifier.kept_cost_fraction()))
    assert sparsifier.warmup_steps == 2 and sparsifier.freeze_step == 8
    assert seen[1][2] == pytest.approx(0.25, abs=1 / 83)  # end of warm-up: at target
    assert [frozen for _, frozen, _ in seen] == [False] * 7 + [True] * 3
    assert sparsifier.beta == 20.0

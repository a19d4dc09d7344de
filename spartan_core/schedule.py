"""Schedules of the cost fraction and of beta: pure functions of the step.

``step`` counts completed optimizer steps: masks for step s are computed after the s-th call
of ``Sparsifier.step()`` (step 0 at construction) and used by the forward passes until the
next call. With T total steps:

- warm-up ends at W = round(warmup_frac * T), clamped to F;
- the mask freezes (fine-tune starts) at F = T - round(finetune_frac * T).

Both schedules use the same progress curve p(x) for x in [0, 1]:
linear p(x) = x, cosine p(x) = (1 - cos(pi * x)) / 2.

``Schedule`` binds one run's settings to these functions: the Sparsifier reads the cost
fraction, beta and the N:M kept mass of every step from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def warmup_steps(total_steps: int, warmup_frac: float, finetune_frac: float = 0.0) -> int:
    """W = min(round(warmup_frac * T), F): the step at which f reaches its target."""
    _check_total(total_steps)
    return min(round(warmup_frac * total_steps), freeze_step(total_steps, finetune_frac))


def freeze_step(total_steps: int, finetune_frac: float) -> int:
    """F = T - round(finetune_frac * T): the step at which the mask is frozen."""
    _check_total(total_steps)
    return total_steps - round(finetune_frac * total_steps)


def progress(x: float, annealing: str) -> float:
    """The annealing curve p(x) on [0, 1]: ``linear`` x or ``cosine`` (1 - cos(pi x)) / 2.

    Raises:
        ValueError: for an unknown ``annealing``.
    """
    x = min(max(x, 0.0), 1.0)
    if annealing == "linear":
        return x
    if annealing == "cosine":
        return 0.5 * (1.0 - math.cos(math.pi * x))
    raise ValueError(f"annealing: expected 'linear' or 'cosine', got {annealing!r}")


def cost_fraction_at(
    step: int,
    *,
    total_steps: int,
    target: float,
    warmup_frac: float,
    finetune_frac: float = 0.0,
    annealing: str = "cosine",
) -> float:
    """Kept cost fraction f at ``step``.

    f(s) = 1 + (target - 1) * p(s / W) for s < W, and ``target`` from W on (also when W = 0).
    """
    w = warmup_steps(total_steps, warmup_frac, finetune_frac)
    if step >= w:
        return float(target)
    return 1.0 + (target - 1.0) * progress(step / w, annealing)


def nm_kept_at(
    step: int,
    *,
    total_steps: int,
    nm: tuple[int, int],
    warmup_frac: float,
    finetune_frac: float = 0.0,
    annealing: str = "cosine",
) -> float:
    """Kept mass per N:M group at ``step``: the kept fraction f annealed from 1 to n / m.

    k(s) = m + (n - m) * p(s / W) for s < W, and exactly n from W on (also when W = 0): the
    soft budget of every group of m is k(s) and the hard mask keeps ceil(k(s)) per group, so
    n per group from the end of warm-up (the mask then freezes at F as for any structure).
    """
    n, m = nm
    w = warmup_steps(total_steps, warmup_frac, finetune_frac)
    if step >= w:
        return float(n)
    return m + (n - m) * progress(step / w, annealing)


def beta_at(
    step: int,
    *,
    total_steps: int,
    beta_init: float,
    beta_max: float,
    finetune_frac: float,
    annealing: str = "cosine",
) -> float:
    """Inverse temperature beta at ``step``: geometric interpolation over [0, F).

    beta(s) = beta_init * (beta_max / beta_init) ** p(s / F) for s < F, ``beta_max`` from F.

    Geometric rather than linear because beta is an inverse temperature: the width of the
    soft mask's transition is proportional to 1 / beta, so equal ratios of beta sharpen the
    mask by equal factors. A linear ramp from 1 to 10 would leave the mask at its softest for
    only the first few percent of the schedule; the geometric one spends as many steps going
    from 1 to sqrt(10) as from sqrt(10) to 10.
    """
    f = freeze_step(total_steps, finetune_frac)
    if step >= f:
        return float(beta_max)
    return beta_init * (beta_max / beta_init) ** progress(step / f, annealing)


@dataclass(frozen=True)
class Schedule:
    """The schedules of one run of T = ``total_steps`` steps (see the module docstring).

    Attributes:
        total_steps: T.
        target: the kept cost fraction f reached at the end of warm-up.
        beta_init: beta at step 0.
        beta_max: beta from fine-tune start on (for blocks, already times sqrt(r * c)).
        warmup_frac: fraction of the steps over which f anneals from 1 to ``target``.
        finetune_frac: fraction of the steps, at the end, with the masks frozen.
        annealing: ``linear`` or ``cosine``.
        nm: (n, m) for N:M structure, whose groups keep the mass :meth:`nm_kept`.
    """

    total_steps: int
    target: float
    beta_init: float
    beta_max: float
    warmup_frac: float
    finetune_frac: float
    annealing: str = "cosine"
    nm: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        _check_total(self.total_steps)

    @property
    def warmup_steps(self) -> int:
        """W: the step from which the cost fraction is at its target."""
        return warmup_steps(self.total_steps, self.warmup_frac, self.finetune_frac)

    @property
    def freeze_step(self) -> int:
        """F: the step at which the masks freeze (fine-tune start)."""
        return freeze_step(self.total_steps, self.finetune_frac)

    def cost_fraction(self, step: int) -> float:
        """Kept cost fraction f at ``step`` (:func:`cost_fraction_at`)."""
        return cost_fraction_at(
            step,
            total_steps=self.total_steps,
            target=self.target,
            warmup_frac=self.warmup_frac,
            finetune_frac=self.finetune_frac,
            annealing=self.annealing,
        )

    def beta(self, step: int) -> float:
        """Inverse temperature at ``step`` (:func:`beta_at`)."""
        return beta_at(
            step,
            total_steps=self.total_steps,
            beta_init=self.beta_init,
            beta_max=self.beta_max,
            finetune_frac=self.finetune_frac,
            annealing=self.annealing,
        )

    def nm_kept(self, step: int) -> float:
        """Kept mass per N:M group at ``step`` (:func:`nm_kept_at`)."""
        assert self.nm is not None
        return nm_kept_at(
            step,
            total_steps=self.total_steps,
            nm=self.nm,
            warmup_frac=self.warmup_frac,
            finetune_frac=self.finetune_frac,
            annealing=self.annealing,
        )


def _check_total(total_steps: int) -> None:
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps: expected a positive integer, got {total_steps!r}")

"""The soft top-k solvers' inputs, validated: segments of unit values with their costs.

The Sparsifier keeps one budget over many layers. Functions taking ``segments`` accept a list
of ``(unit_values, cost)`` pairs, one per layer, where ``cost`` is a python float shared by the
whole segment or a tensor of per-entry costs; segments are never concatenated. Every check
raises ValueError naming the argument. float16 and bfloat16 inputs are computed in float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from spartan_core.numerics import INF_BITS, INT_VIEW, from_bits, sum64

Segments = Sequence[tuple[Tensor, float | Tensor]]

REACH_SLACK = 1e-10  # relative slack on the budget when deciding that it is reached
FULL_BUDGET = 1e-12  # budget within this relative distance of sum(c) keeps everything
_DEFAULT_TOL = {torch.float64: 1e-10, torch.float32: 1e-6}


@dataclass
class Segment:
    """One validated segment: unit values, its cost (scalar or per entry) and summaries."""

    u: Tensor  # (n_j,) float32 or float64, contiguous, no -0.0
    scalar_cost: float | None
    cost: Tensor | None  # (n_j,) same dtype as u, or None for a scalar cost
    total_cost: float
    u_min: float
    u_max: float

    @property
    def n(self) -> int:
        return self.u.numel()

    @property
    def bits(self) -> Tensor:
        return self.u.view(INT_VIEW[self.u.dtype])


def check_positive(name: str, x: object) -> float:
    """``x`` as a positive finite float."""
    try:
        value = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected a positive number, got {x!r}") from exc
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: expected a positive finite number, got {x!r}")
    return value


def compute_dtype(name: str, t: object) -> torch.dtype:
    """The dtype a 1-D float tensor is computed in: float64 stays, the rest is float32."""
    if not isinstance(t, Tensor):
        raise ValueError(f"{name}: expected a tensor, got {type(t).__name__}")
    if t.dim() != 1:
        raise ValueError(f"{name}: expected a 1-D tensor, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got {t.dtype}")
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def check_unit_values(u: Tensor, dtype: torch.dtype, name: str) -> tuple[Tensor, float, float]:
    """Check unit values (finite, non-negative) in one min/max pass over their bit patterns."""
    u = u.detach().to(dtype).contiguous()
    if u.numel() == 0:
        raise ValueError(f"{name}: empty tensor")
    lo_bits, hi_bits = (int(x) for x in torch.aminmax(u.view(INT_VIEW[dtype])))
    if hi_bits >= INF_BITS[dtype]:
        kind = "NaN" if bool(torch.isnan(u).any()) else "inf"
        raise ValueError(f"{name}: contains {kind}")
    if lo_bits < 0:  # a sign bit: negative values, -0.0 or a negative NaN
        if bool(torch.isnan(u).any()):
            raise ValueError(f"{name}: contains NaN")
        smallest = float(u.min())
        if smallest < 0:
            raise ValueError(f"{name}: values must be non-negative, got minimum {smallest!r}")
        u = u.abs()  # only -0.0 entries: make every bit pattern non-negative
        lo_bits = 0
    return u, from_bits(lo_bits, dtype), from_bits(hi_bits, dtype)


def check_costs(
    cost: Tensor, n: int, dtype: torch.dtype, device: torch.device, name: str
) -> Tensor:
    """Per-entry costs, (n,) positive and finite, in ``dtype`` on ``device``."""
    if cost.dim() != 1 or cost.numel() != n:
        raise ValueError(f"{name}: shape {tuple(cost.shape)} does not match values shape ({n},)")
    c = cost.detach().to(device=device, dtype=dtype).contiguous()
    c_lo, c_hi = (float(x) for x in torch.aminmax(c))
    if not (c_lo > 0 and math.isfinite(c_hi)):  # NaN fails both comparisons
        raise ValueError(f"{name}: costs must be positive and finite, got range [{c_lo}, {c_hi}]")
    return c


def _make_segment(
    u: Tensor, cost: float | Tensor, dtype: torch.dtype, name: str, cost_name: str
) -> Segment:
    """Validate one segment's unit values and cost and summarise it."""
    u, lo, hi = check_unit_values(u, dtype, name)
    if isinstance(cost, Tensor) and cost.dim() == 0:
        cost = float(cost)
    if isinstance(cost, Tensor):
        c = check_costs(cost, u.numel(), dtype, u.device, cost_name)
        return Segment(u, None, c, float(sum64(c)), lo, hi)
    c_scalar = check_positive(cost_name, cost)
    return Segment(u, c_scalar, None, c_scalar * u.numel(), lo, hi)


def prepare_segments(segments: Segments) -> list[Segment]:
    """Validate ``(unit_values, cost)`` pairs: one dtype and one device for all of them."""
    if isinstance(segments, Tensor) or not isinstance(segments, Sequence) or not segments:
        raise ValueError("segments: expected a non-empty sequence of (unit_values, cost) pairs")
    dtypes, devices = set(), set()
    for j, seg in enumerate(segments):
        if not (isinstance(seg, tuple | list) and len(seg) == 2):
            raise ValueError(f"segments[{j}]: expected a (unit_values, cost) pair")
        dtypes.add(compute_dtype(f"segments[{j}] unit values", seg[0]))
        devices.add(seg[0].device)
    if len(devices) > 1:
        raise ValueError(f"segments: all unit values must be on one device, got {devices}")
    dtype = torch.float64 if torch.float64 in dtypes else torch.float32
    return [
        _make_segment(u, c, dtype, f"segments[{j}] unit values", f"segments[{j}] cost")
        for j, (u, c) in enumerate(segments)
    ]


def check_budget(budget: object, total: float) -> float:
    """The budget k in (0, total], a relative 1e-9 above the total clamped to it."""
    try:
        k = float(budget)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"budget: expected a number, got {budget!r}") from exc
    if not (math.isfinite(k) and 0 < k <= total * (1 + 1e-9)):
        raise ValueError(f"budget: must lie in (0, sum of costs = {total!r}], got {budget!r}")
    return min(k, total)


def default_tol(dtype: torch.dtype, tol: float | None) -> float:
    """The solver tolerance: ``tol`` checked, or 1e-10 (float64) / 1e-6 (float32)."""
    if tol is None:
        return _DEFAULT_TOL[dtype]
    return check_positive("tol", tol)


def check_max_iter(max_iter: object) -> int:
    """``max_iter`` as a positive integer."""
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter: expected a positive integer, got {max_iter!r}")
    return max_iter

"""Soft top-k per N:M group: one dual per group, every group solved in one batched problem.

For unit values u of shape (G, m) (G groups of m entries, see ``spartan_core.nm``), a kept
mass k in (0, m] per group and an inverse temperature beta > 0, the soft mask is DESIGN 1.1
restricted to each group with unit costs:

    m_gi = sigmoid(beta * (u_gi - lam_g)),   lam_g the root of  sum_i m_gi = k,

and the hard mask keeps the ceil(k) largest unit values of each group (ties to the lower index),
exactly n per group for k = n. (An N:M layer prices all its entries the same, so its costs
cancel from the group's constraint; a layer's cost c enters only as u = v / c.)

Solver: safeguarded Newton on the vector of duals lam (G,), with g_g(lam) = sum_i m_gi - k and
g_g' = -beta * sum_i m_gi (1 - m_gi), inside each group's exact bracket
[min_i u_gi - logit(k/m) / beta, max_i u_gi - logit(k/m) / beta]; a group bisects whenever its
Newton step leaves the bracket or fails to halve |g_g|. Every pass updates all groups at once
(tensor operations on (G, m), no loop over groups) and syncs with the host once, to test
convergence (|g_g| <= tol * k, or a bracket narrowed to float64 rounding). Cold start: the
midpoint between each group's ceil(k)-th and next largest value, shifted by -logit(k/m) / beta,
which is exact for all-equal values and falls in the gap as beta -> inf; warm start: the
previous step's duals, clamped into the brackets (1-2 passes). Duals and masks are computed in
float64; ``sigmoid`` saturates to exactly 0 or 1, so large |beta * (u - lam)| gives no inf or
NaN.

Backward, implicit differentiation of each group's constraint, with g = dL/dm and
s = m (1 - m) (costs and k get no gradient):

    dL/du_j = beta * s_j * (g_j - sum_{i in group(j)} g_i s_i / sum_{i in group(j)} s_i)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from spartan_core.nm import kept_count, nm_hard_mask, sort_groups

_DEFAULT_TOL = 1e-10  # relative to k, in float64
_BRACKET_EPS = 4 * 2.220446049250313e-16  # a bracket this narrow (relative) is converged
_FULL_SLACK = 1e-9  # a kept mass within this of m keeps everything


@dataclass(frozen=True)
class SoftTopKNMResult:
    """Outcome of :func:`soft_topk_nm`.

    Attributes:
        mask: (G, m) soft mask in [0, 1], each row summing to the kept mass; differentiable
            w.r.t. the values.
        hard_mask: (G, m) bool, the ceil(kept) largest values of each row.
        dual: (G,) float64 duals lam_g (``-inf`` when everything is kept).
        iterations: solver passes over the data.
    """

    mask: Tensor
    hard_mask: Tensor
    dual: Tensor
    iterations: int


def cold_start_duals(sorted_values: Tensor, kept: float, beta: float) -> Tensor:
    """Starting duals (G,) from each group's values in descending order (see module doc)."""
    m = sorted_values.shape[1]
    cut = min(kept_count(kept, m), m - 1)  # the first entry below the cut (or the last)
    above, below = sorted_values[:, cut - 1], sorted_values[:, cut]
    f = kept / m
    return 0.5 * (above + below) - math.log(f / (1.0 - f)) / beta


def solve_group_duals(
    units: Tensor,
    kept: float,
    beta: float,
    *,
    start: Tensor | None = None,
    tol: float = _DEFAULT_TOL,
    max_iter: int = 100,
) -> tuple[Tensor, Tensor, int]:
    """The duals of every group and the soft mask they give.

    Args:
        units: (G, m) float64 unit values, finite and >= 0.
        kept: kept mass per group in (0, m]; at m (within 1e-9) everything is kept.
        beta: inverse temperature, > 0.
        start: (G,) starting duals (non-finite entries start at their bracket's midpoint);
            default the cold start of :func:`cold_start_duals`.
        tol: convergence tolerance on |sum_i m_gi - kept|, relative to ``kept``.
        max_iter: the most passes.

    Returns:
        ``(dual, mask, iterations)``: (G,) float64, (G, m) float64 and the passes used.
    """
    groups, m = units.shape
    if kept >= m - _FULL_SLACK:
        full = torch.full((groups,), -math.inf, dtype=units.dtype, device=units.device)
        return full, torch.ones_like(units), 0
    f = kept / m
    shift = math.log(f / (1.0 - f)) / beta
    lo = units.amin(1) - shift  # (G,) g >= 0 here
    hi = units.amax(1) - shift  # (G,) g <= 0 here
    if start is None:
        start = cold_start_duals(sort_groups(units)[0], kept, beta)
    start = start.to(units)
    lam = torch.where(torch.isfinite(start), start, 0.5 * (lo + hi))
    lam = torch.minimum(torch.maximum(lam, lo), hi)
    previous = torch.full_like(lam, math.inf)
    goal = tol * kept
    iterations = 0
    while True:
        iterations += 1
        mask = torch.sub(units, lam[:, None]).mul_(beta).sigmoid_()  # (G, m)
        excess = mask.sum(1).sub_(kept)  # (G,) g(lam), decreasing in lam
        size = excess.abs()
        done = (size <= goal) | (hi - lo <= _BRACKET_EPS * (lo.abs() + hi.abs()))
        if iterations >= max_iter or bool(done.all()):
            return lam, mask, iterations
        lo = torch.where(excess > 0, lam, lo)
        hi = torch.where(excess < 0, lam, hi)
        slope = torch.addcmul(mask, mask, mask, value=-1.0).sum(1).mul_(beta)  # -g'(lam)
        newton = lam + excess / slope
        ok = (slope > 0) & (newton > lo) & (newton < hi) & (size <= 0.5 * previous)
        lam = torch.where(done, lam, torch.where(ok, newton, 0.5 * (lo + hi)))
        previous = size


def group_soft_backward(grad_mask: Tensor, mask: Tensor, beta: float) -> Tensor:
    """dL/du = beta * s * (g - sum_group g s / sum_group s), s = m (1 - m): (G, m).

    Args:
        grad_mask: (G, m) upstream gradient g = dL/dm.
        mask: (G, m) the soft mask.
        beta: the inverse temperature the mask was solved with (or beta / c for dL/dv).
    """
    s = torch.addcmul(mask, mask, mask, value=-1.0)  # (G, m)
    gs = (grad_mask * s).sum(1, keepdim=True)  # (G, 1)
    ss = s.sum(1, keepdim=True)  # (G, 1); 0 only where every s is 0 (then gs is 0 too)
    ratio = gs / ss.clamp_min(torch.finfo(s.dtype).tiny)
    return (grad_mask - ratio).mul_(s).mul_(beta)


class SoftTopKNMFunction(torch.autograd.Function):
    """Soft and hard masks of (G, m) values with the per-group implicit backward.

    ``apply(values, kept, beta, dual_init, tol, max_iter)`` returns
    ``(mask, hard_mask, dual, iterations)``; only ``mask`` is differentiable. Inputs are
    validated by :func:`soft_topk_nm`, the public entry point.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        values: Tensor,
        kept: float,
        beta: float,
        dual_init: Tensor | None,
        tol: float,
        max_iter: int,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        units = values.detach().to(torch.float64)
        ordered, order = sort_groups(units)
        start = cold_start_duals(ordered, kept, beta) if kept < units.shape[1] else None
        if dual_init is not None and start is not None:
            warm = dual_init.to(units)
            start = torch.where(torch.isfinite(warm), warm, start)
        dual, mask, iterations = solve_group_duals(
            units, kept, beta, start=start, tol=tol, max_iter=max_iter
        )
        hard = nm_hard_mask(units, kept_count(kept, units.shape[1]), order=order)
        mask = mask.to(values.dtype)
        ctx.beta = beta
        ctx.save_for_backward(mask)
        count = torch.tensor(iterations)
        ctx.mark_non_differentiable(hard, dual, count)
        return mask, hard, dual, count

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any, grad_mask: Tensor, *_unused: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        (mask,) = ctx.saved_tensors
        grad = group_soft_backward(grad_mask, mask, ctx.beta)
        return grad, None, None, None, None, None


def soft_topk_nm(
    values: Tensor,
    n: float,
    beta: float,
    *,
    dual_init: Tensor | None = None,
    tol: float | None = None,
    max_iter: int = 100,
) -> SoftTopKNMResult:
    """Soft top-n of every group of a (G, m) tensor, differentiable w.r.t. ``values``.

    Args:
        values: (G, m) non-negative unit values, one group of m per row (an N:M layer's
            ``|w| / c`` viewed with ``spartan_core.nm.group_view``).
        n: kept mass per group, in (0, m]: the integer n of N:M, or a real mass during
            warm-up (the hard mask then keeps ceil(n) per group).
        beta: inverse temperature, > 0.
        dual_init: (G,) the previous step's duals, to warm-start the solver.
        tol: tolerance on each group's kept mass, relative to n; default 1e-10.
        max_iter: the most solver passes.

    Returns:
        A :class:`SoftTopKNMResult` (mask in the values' dtype, duals in float64).

    Raises:
        ValueError: naming the argument, for values that are not a 2-D float tensor with at
            least two columns, NaN, inf or negative values, n outside (0, m], a non-positive
            or non-finite beta or tol, a bad max_iter, or a misshapen ``dual_init``.
    """
    if not isinstance(values, Tensor) or values.dim() != 2 or not values.is_floating_point():
        raise ValueError(f"values: expected a 2-D float tensor (G, m), got {_describe(values)}")
    groups, m = values.shape
    if groups == 0 or m < 2:
        raise ValueError(
            f"values: expected at least one group of m >= 2, got {tuple(values.shape)}"
        )
    if not bool(torch.isfinite(values).all()) or bool((values < 0).any()):
        raise ValueError("values: must be finite and non-negative")
    if not _is_real(n) or not 0.0 < n <= m:
        raise ValueError(f"n: expected a kept mass in (0, {m}], got {n!r}")
    if not _is_real(beta) or not beta > 0:
        raise ValueError(f"beta: expected a positive finite number, got {beta!r}")
    tol = _DEFAULT_TOL if tol is None else tol
    if not _is_real(tol) or not tol > 0:
        raise ValueError(f"tol: expected a positive finite number, got {tol!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter: expected a positive integer, got {max_iter!r}")
    if dual_init is not None and (
        not isinstance(dual_init, Tensor) or tuple(dual_init.shape) != (groups,)
    ):
        raise ValueError(
            f"dual_init: expected a tensor of shape ({groups},), got {_describe(dual_init)}"
        )
    if dual_init is not None:
        dual_init = dual_init.detach().to(values.device)
    mask, hard, dual, iterations = SoftTopKNMFunction.apply(
        values, float(n), float(beta), dual_init, float(tol), max_iter
    )
    return SoftTopKNMResult(mask=mask, hard_mask=hard, dual=dual, iterations=int(iterations))


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"{value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__

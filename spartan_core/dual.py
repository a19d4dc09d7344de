"""The dual lam of the soft top-k: the root of sum_i c_i sigmoid(beta * (u_i - lam)) = k.

Safeguarded Newton on lam (g'(lam) = -beta * sum_i c_i m_i (1 - m_i)) inside the exact bracket
[min u - logit(f) / beta, max u - logit(f) / beta], f = k / sum c, bisecting whenever a Newton
step leaves the bracket or fails to halve |g|. One pass per iteration computes m and the sums
of c m and c m^2; the budget sum is accurate (float32 partial sums over chunks, then float64),
the slope needs only the input precision. A final Newton step is accepted without a
verification pass when a Taylor bound already guarantees the tolerance. Warm-started from the
previous step's lam it needs 1-2 passes; cold it starts from a dual solved on a sample and
needs about 3. On contiguous float32 CPU tensors each pass runs as one fused C kernel
(:mod:`spartan_core.native`).
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor

from spartan_core import native
from spartan_core.numerics import dot64, dot_fast, sum64, weighted_square_sum
from spartan_core.segments import (
    FULL_BUDGET,
    REACH_SLACK,
    Segment,
    Segments,
    check_budget,
    check_max_iter,
    check_positive,
    default_tol,
    prepare_segments,
)
from spartan_core.threshold import draw_sample, select

logger = logging.getLogger(__name__)

# derivative rounding allowance per entry for the skip-verification bound
_D_SLACK = {torch.float64: 1e-12, torch.float32: 3e-5}


def _sigmoid_into(u: Tensor, dual: float, beta: float, out: Tensor) -> Tensor:
    """m = sigmoid(beta * u - beta * dual) into ``out`` (two passes, no temporaries)."""
    if native.usable(u, out):
        native.sigmoid_sums(u, None, beta, -beta * dual, out)
        return out
    shift = torch.tensor(-beta * dual, dtype=torch.float64)  # 0-d: broadcast as a scalar
    torch.add(shift, u, alpha=beta, out=out)
    return out.sigmoid_()


def soft_mask(unit_values: Tensor, dual: float, beta: float) -> Tensor:
    """The soft mask ``sigmoid(beta * (u - dual))`` in the input dtype.

    Computed as ``sigmoid(beta * u - beta * dual)``; sigmoid saturates to exactly 0 or 1, so
    large ``beta * |u - dual|`` neither overflows nor gives NaN; ``dual = -inf`` gives all ones.
    Bit-for-bit the mask ``soft_topk`` returns for the same unit values and dual.

    Args:
        unit_values: (n,) unit values u.
        dual: lam from :func:`solve_dual` (or ``SoftTopKResult.dual``).
        beta: inverse temperature, > 0.

    Returns:
        (n,) tensor of the same dtype and device as ``unit_values``.
    """
    beta = check_positive("beta", beta)
    if not isinstance(unit_values, Tensor) or not unit_values.is_floating_point():
        raise ValueError("unit_values: expected a floating-point tensor")
    if dual == -math.inf:
        return torch.ones_like(unit_values)
    u = unit_values.contiguous()  # the layout soft_topk computes in, so the rounding matches
    return _sigmoid_into(u, dual, beta, torch.empty_like(u))


class _Evaluator:
    """Evaluates sum c m and sum c m (1 - m) at a given lam.

    With ``buffers`` (one per segment) the masks of the last evaluation are kept there;
    without, one scratch buffer the size of the largest segment serves every segment in turn
    (for many layers it stays in cache) and no masks are kept.
    """

    def __init__(self, segs: list[Segment], beta: float, buffers: list[Tensor] | None) -> None:
        self.segs = segs
        self.beta = beta
        self.keeps_masks = buffers is not None
        if buffers is None:
            scratch = torch.empty(
                max(s.n for s in segs), dtype=segs[0].u.dtype, device=segs[0].u.device
            )
            buffers = [scratch[: s.n] for s in segs]
        self.masks = buffers
        self.n = sum(s.n for s in segs)

    def fill(self, lam: float) -> None:
        """The masks at lam, without reductions (only when masks are kept)."""
        if self.keeps_masks:
            for seg, m in zip(self.segs, self.masks, strict=True):
                _sigmoid_into(seg.u, lam, self.beta, m)

    def __call__(self, lam: float) -> tuple[float, float]:
        """(sum c m, sum c m (1 - m)); the latter in the input precision."""
        sums = []
        kept = squares = 0.0
        for seg, m in zip(self.segs, self.masks, strict=True):
            if native.usable(seg.u, seg.cost):
                out = m if self.keeps_masks else None
                cm, cm2 = native.sigmoid_sums(seg.u, seg.cost, self.beta, -self.beta * lam, out)
                c = 1.0 if seg.cost is not None else seg.scalar_cost
                kept, squares = kept + c * cm, squares + c * cm2
                continue
            _sigmoid_into(seg.u, lam, self.beta, m)
            if seg.cost is None:
                c = seg.scalar_cost
                sums.append(torch.stack((sum64(m) * c, dot_fast(m, m) * c)))
            else:
                sums.append(torch.stack((dot64(seg.cost, m), weighted_square_sum(seg.cost, m))))
        if sums:
            torch_kept, torch_squares = torch.stack(sums).sum(0).tolist()
            kept, squares = kept + torch_kept, squares + torch_squares
        return kept, kept - squares


def _distinct(a: float, b: float, beta: float, dtype: torch.dtype) -> bool:
    """Whether lam = a and lam = b can give different masks in ``dtype``."""
    x = torch.tensor([0.5 * beta * a, 0.5 * beta * b], dtype=torch.float64).to(dtype)
    return bool(torch.nextafter(x[0], x[1]) != x[1]) and bool(x[0] != x[1])


def solve(
    segs: list[Segment],
    budget: float,
    beta: float,
    init: float | None,
    tol: float,
    max_iter: int,
    buffers: list[Tensor] | None = None,
) -> tuple[float, int, _Evaluator | None]:
    """Root lam of sum c sigmoid(beta (u - lam)) = budget; the evaluator holds the masks."""
    dtype = segs[0].u.dtype
    total = sum(s.total_cost for s in segs)
    f = budget / total
    if f >= 1 - FULL_BUDGET:
        return -math.inf, 0, None
    logit_f = math.log(f) - math.log1p(-f)
    # m_i >= f for every i at lo and <= f at hi, so the root lies in [lo, hi]
    lo = min(s.u_min for s in segs) - logit_f / beta
    hi = max(s.u_max for s in segs) - logit_f / beta
    pad = 8 * torch.finfo(dtype).eps * max(abs(lo), abs(hi), 1e-30)
    lo, hi = lo - pad, hi + pad
    lam = 0.5 * (lo + hi) if init is None or not math.isfinite(init) else min(max(init, lo), hi)
    evaluate = _Evaluator(segs, beta, buffers)
    slack = _D_SLACK[dtype] * evaluate.n
    g = previous_g = math.inf
    evaluated = lam
    for it in range(1, max_iter + 1):
        evaluated = lam
        kept, slope_sum = evaluate(lam)
        g = kept - budget
        if abs(g) <= tol * budget:
            return lam, it, evaluate
        if g > 0:
            lo = max(lo, lam)
        else:
            hi = min(hi, lam)
        if not _distinct(lo, hi, beta, dtype):
            logger.debug(
                "solve_dual: stopped at %s resolution, |g|/k = %.3g", dtype, abs(g) / budget
            )
            return lam, it, evaluate
        step = g / (beta * slope_sum) if slope_sum > 0 else math.nan
        candidate = lam + step
        # bisect when Newton leaves the bracket or the last Newton step did not halve |g|
        stalled = abs(g) > 0.5 * previous_g
        previous_g = abs(g)
        if not lo < candidate < hi or stalled:
            lam = 0.5 * (lo + hi)
            previous_g = math.inf
            continue
        if it < max_iter and beta * abs(step) < 1.0:
            # |g(lam + step)| <= beta^2 / 2 * max |sum c m(1-m)(1-2m)| * step^2, and
            # m(1-m) grows by at most exp(beta |step|) over the step
            bound = 0.5 * beta**2 * (slope_sum + slack) * math.exp(beta * abs(step)) * step**2
            if bound <= 0.5 * tol * budget:
                evaluate.fill(candidate)  # a pass only when the masks are wanted
                return candidate, it + int(evaluate.keeps_masks), evaluate
        lam = candidate
    logger.warning(
        "solve_dual: no convergence in %d iterations (|g|/k = %.3g)", max_iter, abs(g) / budget
    )
    return evaluated, max_iter, evaluate


def sample_dual(sample: tuple[Tensor, Tensor], budget: float, beta: float) -> float:
    """lam solved on a sample: a cold start for :func:`solve`."""
    values, weights = sample
    seg = Segment(
        values, None, weights, float(weights.sum()), float(values.min()), float(values.max())
    )
    scale = seg.total_cost
    lam, _, _ = solve([seg], min(budget, scale) * (1 - 1e-12), beta, None, 1e-6, 60)
    return lam


def solve_dual(
    segments: Segments,
    budget: float,
    beta: float,
    *,
    init: float | None = None,
    tol: float | None = None,
    max_iter: int = 100,
) -> tuple[float, int]:
    """The dual lam with ``sum_j sum_i c_ij * sigmoid(beta * (u_ij - lam)) = budget``.

    Args:
        segments: ``(unit_values, cost)`` pairs (see :mod:`spartan_core.segments`).
        budget: k in (0, total cost].
        beta: inverse temperature, > 0.
        init: a starting lam (the previous step's dual); cold starts begin at a dual solved on
            a small sample of the values.
        tol: stop when ``|g(lam)| <= tol * budget``; default 1e-10 (float64), 1e-6 (float32).
        max_iter: maximum number of passes.

    Returns:
        ``(lam, passes)``; lam is ``-inf`` when the budget keeps everything.

    Raises:
        ValueError: as ``hard_threshold``, and for a non-positive beta, tol or max_iter.
    """
    beta = check_positive("beta", beta)
    max_iter = check_max_iter(max_iter)
    segs = prepare_segments(segments)
    dtype = segs[0].u.dtype
    tol = default_tol(dtype, tol)
    k = check_budget(budget, sum(s.total_cost for s in segs))
    with torch.no_grad():
        if init is None and k < sum(s.total_cost for s in segs) * (1 - FULL_BUDGET):
            init = sample_dual(draw_sample(segs), k, beta)
        lam, iters, _ = solve(segs, k, beta, init, tol, max_iter)
    return lam, iters


def hard_threshold_and_dual(
    segments: Segments,
    budget: float,
    beta: float,
    *,
    threshold_init: float | None = None,
    dual_init: float | None = None,
    tol: float | None = None,
    max_iter: int = 100,
) -> tuple[float, float, int]:
    """:func:`hard_threshold` and :func:`solve_dual` together, validating the segments once.

    Returns:
        ``(threshold, lam, passes of the dual solve)``.
    """
    beta = check_positive("beta", beta)
    max_iter = check_max_iter(max_iter)
    segs = prepare_segments(segments)
    dtype = segs[0].u.dtype
    tol = default_tol(dtype, tol)
    total = sum(s.total_cost for s in segs)
    k = check_budget(budget, total)
    with torch.no_grad():
        threshold, _, sample = select(segs, k * (1 - REACH_SLACK), dtype, threshold_init)
        init = dual_init
        if init is None and k < total * (1 - FULL_BUDGET):
            init = sample_dual(sample if sample is not None else draw_sample(segs), k, beta)
        lam, iters, _ = solve(segs, k, beta, init, tol, max_iter)
    return threshold, lam, iters

"""Cost-weighted soft top-k under a budget (Spartan, Tai, Tian and Lim, NeurIPS 2022).

Each maskable entry i has a unit value u_i = v_i / c_i (value per unit of cost, v_i >= 0,
c_i > 0). For a budget k in (0, sum_i c_i] and an inverse temperature beta > 0 the soft mask is

    m_i = sigmoid(beta * (u_i - lam)),   with lam the root of  g(lam) = sum_i c_i m_i - k,

and the hard top-k keeps the entries of largest unit value until their cumulative cost first
reaches k (DESIGN 1.1). Ties at the threshold are all kept, so ``hard_mask == (u >= threshold)``
always holds and the kept cost is at least k (it overshoots by less than the cost of the entries
tied at the threshold, usually one entry). A relative slack of 1e-10 on k absorbs rounding, so
``k = 0.05 * 1000`` keeps 50 unit-cost entries, not 51.

The parts, each linear in n (no full sort), in their own modules:

- :mod:`spartan_core.segments`: the checks of the inputs (segments of unit values and costs);
- :mod:`spartan_core.threshold`: ``hard_threshold``, an exact selection on bit patterns;
- :mod:`spartan_core.dual`: ``solve_dual``, safeguarded Newton on lam, and ``soft_mask``;
- this module: ``soft_topk``, both of them in one pass with the implicit backward.

Kernels: on contiguous float32 CPU tensors each pass (the window keying, the dual's sums, the
final soft and hard masks, the backward) runs as one fused C kernel from
:mod:`spartan_core.native`; elsewhere the same passes run as PyTorch operations. The two agree
to float32 rounding and select the same threshold.

Numerics: sigmoid saturates to exactly 0 or 1, so beta up to 1e4 and values over 1e-8..1e3 give
no inf or NaN. For ``budget == sum of costs`` every entry is kept, ``dual`` is ``-inf`` and the
mask is all ones (its gradient is zero). Costs with float32 per-entry tensors are accumulated
with float32 partial sums (about 1e-6 relative), so the float32 hard threshold can differ from an
exact float64 computation when the budget falls that close to a cumulative-cost step; unit and
per-segment costs are counted exactly. float16 and bfloat16 inputs are computed in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from spartan_core import native
from spartan_core.dual import hard_threshold_and_dual, sample_dual, soft_mask, solve, solve_dual
from spartan_core.numerics import INF_BITS, INT_VIEW, PRODUCT_CHUNK, dot_fast, from_bits, sum64
from spartan_core.segments import (
    REACH_SLACK,
    Segment,
    check_budget,
    check_costs,
    check_max_iter,
    check_positive,
    check_unit_values,
    compute_dtype,
    default_tol,
)
from spartan_core.threshold import hard_threshold, select

__all__ = [
    "SoftTopKFunction",
    "SoftTopKResult",
    "hard_threshold",
    "hard_threshold_and_dual",
    "soft_mask",
    "soft_topk",
    "solve_dual",
]


@dataclass(frozen=True)
class SoftTopKResult:
    """Outcome of :func:`soft_topk`.

    Attributes:
        mask: (n,) soft mask m in [0, 1], differentiable w.r.t. the values.
        hard_mask: (n,) bool, the hard top-k under the budget: ``u >= threshold``.
        threshold: unit value of the last entry kept by the hard top-k.
        dual: lam, the root of sum_i c_i m_i = k (``-inf`` when everything is kept).
        iterations: solver passes over the data used for lam.
    """

    mask: Tensor
    hard_mask: Tensor
    threshold: float
    dual: float
    iterations: int


class SoftTopKFunction(torch.autograd.Function):
    """Soft top-k mask of ``values`` with the implicit-differentiation backward of DESIGN 1.1.

    ``apply(values, costs, total, budget, beta, dual_init, threshold_init, tol, max_iter, out)``
    returns ``(mask, hard_mask, stats)`` with ``stats = [threshold, dual, iterations]``
    (float64); ``total`` is the (validated) sum of the costs and ``out`` an optional pair of
    output buffers. Only ``mask`` is differentiable; costs and budget get no gradient:

        dL/dv_j = beta * s_j * (g_j / c_j - sum_i g_i s_i / sum_i c_i s_i),  s = m (1 - m).

    Inputs are validated by :func:`soft_topk`, which is the public entry point.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        values: Tensor,
        costs: Tensor | float,
        total: float,
        budget: float,
        beta: float,
        dual_init: float | None,
        threshold_init: float | None,
        tol: float,
        max_iter: int,
        out: tuple[Tensor, Tensor] | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        dtype = values.dtype
        cost = costs if isinstance(costs, Tensor) else None
        mask, hard = out if out is not None else (torch.empty_like(values), None)
        fused = native.usable(values, cost, mask)
        if cost is not None and fused:
            # u = v / c, checked in the same pass; u lives in the mask buffer until the end
            lo_bits, hi_bits = native.divide(values, cost, mask)
            if lo_bits >= 0 and hi_bits < INF_BITS[dtype]:
                u, lo, hi = mask, from_bits(lo_bits, dtype), from_bits(hi_bits, dtype)
            else:  # raises, or makes -0.0 entries +0.0
                u, lo, hi = check_unit_values(mask, dtype, "values")
        else:
            u = values if cost is None and costs == 1.0 else values / costs
            u, lo, hi = check_unit_values(u, dtype, "values")
        if cost is None:
            seg = Segment(u, float(costs), None, total, lo, hi)
        else:
            seg = Segment(u, None, cost, total, lo, hi)
        segs = [seg]
        if hard is None:
            hard = torch.empty(values.shape, dtype=torch.bool, device=values.device)
        # the PyTorch path keys the selection in the mask buffer, then keeps the masks there
        keys = None if fused else [mask.view(INT_VIEW[dtype])]
        threshold, _, sample = select(
            segs, budget * (1 - REACH_SLACK), dtype, threshold_init, keys=keys
        )
        if dual_init is not None:
            start = dual_init
        elif sample is not None:
            start = sample_dual(sample, budget, beta)
        else:
            start = threshold
        buffers = None if fused else [mask]
        dual, iterations, evaluate = solve(segs, budget, beta, start, tol, max_iter, buffers)
        if evaluate is None:
            torch.ge(u, threshold, out=hard)
            mask.fill_(1.0)
        elif fused:  # one pass: hard mask, then the soft mask in place of u
            native.fill_masks(u, beta, -beta * dual, threshold, mask, hard)
            iterations += 1
        else:
            torch.ge(u, threshold, out=hard)
        stats = torch.tensor([threshold, dual, iterations], dtype=torch.float64)
        ctx.beta = beta
        ctx.scalar_cost = seg.scalar_cost
        ctx.save_for_backward(mask, seg.cost)
        ctx.mark_non_differentiable(hard, stats)
        return mask, hard, stats

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        grad_mask: Tensor,
        _grad_hard: Tensor | None,
        _grad_stats: Tensor | None,
    ) -> tuple[Tensor | None, ...]:
        mask, cost = ctx.saved_tensors
        grad = _implicit_backward(grad_mask.contiguous(), mask, cost, ctx.scalar_cost, ctx.beta)
        return grad, None, None, None, None, None, None, None, None, None


def _implicit_backward(
    g: Tensor, m: Tensor, cost: Tensor | None, scalar_cost: float | None, beta: float
) -> Tensor:
    """dL/dv = beta * s * (g / c - sum g s / sum c s), s = m (1 - m).

    A scalar cost needs two in-place passes over s held in the gradient buffer. Per-entry costs
    take two chunked passes that recompute s per cache-sized chunk, so the only full-size write
    is the gradient itself.
    """
    if native.usable(g, m, cost):
        return native.topk_backward(g, m, cost, beta / (scalar_cost or 1.0))
    if cost is None:
        assert scalar_cost is not None
        grad = torch.addcmul(m, m, m, value=-1.0)  # (n,) s = m (1 - m)
        # the correction term needs ~1e-5 relative accuracy at most: a fast dot suffices
        gs, ss = torch.stack((dot_fast(g, grad), sum64(grad))).tolist()
        ratio = gs / ss if ss > 0 else 0.0  # c * (sum g s / sum c s)
        scale = beta / scalar_cost
        if abs(ratio) > 1e-20:
            # s (g - ratio) * scale = (-ratio * scale) * s * (1 - g / ratio)
            return grad.addcmul_(grad, g, value=-1.0 / ratio).mul_(-ratio * scale)
        return grad.mul_(torch.sub(g, ratio)).mul_(scale)
    n = m.numel()
    chunk = min(n, PRODUCT_CHUNK)
    s = torch.empty(chunk, dtype=m.dtype, device=m.device)
    parts = []
    for start in range(0, n, PRODUCT_CHUNK):
        stop = min(n, start + PRODUCT_CHUNK)
        m_part, s_part = m[start:stop], s[: stop - start]
        torch.addcmul(m_part, m_part, m_part, value=-1.0, out=s_part)  # m (1 - m)
        c_s = torch.dot(cost[start:stop], s_part)
        parts.append(torch.stack((torch.dot(g[start:stop], s_part), c_s)).double())
    gs, cs = torch.stack(parts).sum(0).tolist()
    ratio = gs / cs if cs > 0 else 0.0
    out = torch.empty_like(m)
    for start in range(0, n, PRODUCT_CHUNK):
        stop = min(n, start + PRODUCT_CHUNK)
        m_part, s_part, o = m[start:stop], s[: stop - start], out[start:stop]
        torch.addcmul(m_part, m_part, m_part, value=-1.0, out=s_part)
        torch.div(g[start:stop], cost[start:stop], out=o)
        o.sub_(ratio).mul_(s_part).mul_(beta)
    return out


def _check_out(out: object, values: Tensor, dtype: torch.dtype) -> None:
    """``out`` must be a (mask, hard_mask) pair of contiguous buffers shaped like values."""
    if not (isinstance(out, tuple | list) and len(out) == 2):
        raise ValueError("out: expected a (mask, hard_mask) pair of tensors")
    for name, buf, want in (("out[0]", out[0], dtype), ("out[1]", out[1], torch.bool)):
        if not isinstance(buf, Tensor):
            raise ValueError(f"{name}: expected a tensor, got {type(buf).__name__}")
        if buf.shape != values.shape or buf.dtype != want or buf.device != values.device:
            raise ValueError(
                f"{name}: expected shape {tuple(values.shape)}, dtype {want}, device "
                f"{values.device}; got {tuple(buf.shape)}, {buf.dtype}, {buf.device}"
            )
        if not buf.is_contiguous():
            raise ValueError(f"{name}: must be contiguous")


def soft_topk(
    values: Tensor,
    costs: Tensor | float,
    budget: float,
    beta: float,
    *,
    dual_init: float | None = None,
    threshold_init: float | None = None,
    tol: float | None = None,
    max_iter: int = 100,
    out: tuple[Tensor, Tensor] | None = None,
) -> SoftTopKResult:
    """Cost-weighted soft top-k of DESIGN 1.1, differentiable w.r.t. ``values``.

    Args:
        values: (n,) non-negative entry values v (|w|, or per-block sums of |w|).
        costs: (n,) positive per-entry costs, or one python float shared by all entries.
        budget: k in (0, sum of costs].
        beta: inverse temperature, > 0.
        dual_init: the previous step's dual, to warm-start the solver (else it starts from a
            dual solved on a sample of the values, or from the hard threshold).
        threshold_init: the previous step's threshold, to warm-start the hard top-k.
        tol: relative budget tolerance; default 1e-10 (float64), 1e-6 (float32).
        max_iter: maximum solver passes.
        out: ``(mask, hard_mask)`` buffers to write the result into: (n,) of the computation
            dtype (float32, or float64 for float64 values) and (n,) bool, on the values'
            device. A loop calling this every step saves the page faults of fresh outputs
            (on CPU about as long as the whole warm-started update). Writing into a buffer
            whose previous mask is still part of an autograd graph makes that graph's
            backward an error.

    Returns:
        A :class:`SoftTopKResult`.

    Raises:
        ValueError: naming the argument, for a non-1-D or non-float tensor, mismatched shapes,
            NaN/inf/negative values, non-positive or non-finite costs, a budget outside
            (0, sum of costs], a non-positive beta, tol or max_iter, or unfit ``out`` buffers.
    """
    dtype = compute_dtype("values", values)
    beta = check_positive("beta", beta)
    max_iter = check_max_iter(max_iter)
    tol = default_tol(dtype, tol)
    if values.numel() == 0:
        raise ValueError("values: empty tensor")
    if isinstance(costs, Tensor) and costs.dim() == 0:
        costs = float(costs)
    if isinstance(costs, Tensor):
        compute_dtype("costs", costs)
        costs = check_costs(costs, values.numel(), dtype, values.device, "costs")
        total = float(sum64(costs))
    else:
        costs = check_positive("costs", costs)
        total = costs * values.numel()
    k = check_budget(budget, total)
    if out is not None:
        _check_out(out, values, dtype)
    input_dtype = values.dtype
    mask, hard, stats = SoftTopKFunction.apply(
        values.to(dtype), costs, total, k, beta, dual_init, threshold_init, tol, max_iter, out
    )
    threshold, dual, iterations = stats.tolist()
    return SoftTopKResult(
        mask=mask.to(input_dtype),
        hard_mask=hard,
        threshold=threshold,
        dual=dual,
        iterations=int(iterations),
    )

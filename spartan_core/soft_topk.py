"""Cost-weighted soft top-k under a budget (Spartan, Tai, Tian and Lim, NeurIPS 2022).

Each maskable entry i has a unit value u_i = v_i / c_i (value per unit of cost, v_i >= 0,
c_i > 0). For a budget k in (0, sum_i c_i] and an inverse temperature beta > 0 the soft mask is

    m_i = sigmoid(beta * (u_i - lam)),   with lam the root of  g(lam) = sum_i c_i m_i - k,

and the hard top-k keeps the entries of largest unit value until their cumulative cost first
reaches k (DESIGN 1.1). Ties at the threshold are all kept, so ``hard_mask == (u >= threshold)``
always holds and the kept cost is at least k (it overshoots by less than the cost of the entries
tied at the threshold, usually one entry). A relative slack of 1e-10 on k absorbs rounding, so
``k = 0.05 * 1000`` keeps 50 unit-cost entries, not 51.

Solvers (both linear in n, no sort):

- ``hard_threshold``: a radix select on the IEEE bit patterns of the unit values (non-negative
  floats order like their bit patterns read as integers). Each pass counts (or cost-weights)
  the entries into 2**16 bit-pattern bins with ``bincount`` and narrows to the bin where the
  cumulative cost from the top first reaches k; at bin width one pattern the threshold is
  exact. Cold: a min/max pass plus two passes for float32 (four for float64). Warm (``init`` =
  the previous threshold): one pass over a window of 2**16 patterns around ``init`` (about
  +-0.4% in float32), falling back to cold when the threshold left the window.
- ``solve_dual``: safeguarded Newton on lam (g'(lam) = -beta * sum_i c_i m_i (1 - m_i)) inside
  the exact bracket [min u - logit(f) / beta, max u - logit(f) / beta], f = k / sum c, with
  bisection whenever a Newton step leaves the bracket. One pass per iteration computes m and
  the two reductions it needs; reductions accumulate in float64 (float32 partial sums over
  chunks of 4096 entries, then float64). Warm-started from the previous step's lam it
  typically needs 2-3 passes; cold it starts from the hard threshold.

Segments: the Sparsifier keeps one budget over many layers. Functions taking ``segments``
accept a list of ``(unit_values, cost)`` pairs, one per layer, where ``cost`` is a python float
shared by the whole segment or a tensor of per-entry costs; segments are never concatenated.

Numerics: ``sigmoid`` saturates to exactly 0 or 1, so beta up to 1e4 and values over 1e-8..1e3
give no inf or NaN. For ``budget == sum of costs`` every entry is kept, ``dual`` is ``-inf`` and
the mask is all ones (its gradient is zero). In float32 lam is rounded to float32 before each
evaluation so that the returned dual reproduces the returned mask exactly; when beta * u is so
large that adjacent float32 values of lam straddle the root the solver stops at the closest
one and reports the iterations used. float16 and bfloat16 inputs are computed in float32.
"""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

logger = logging.getLogger(__name__)

Segments = Sequence[tuple[Tensor, float | Tensor]]

_CHUNK = 4096  # entries per float32 partial sum before accumulating in float64
_MAX_BIN_BITS = 16  # log2 of the number of radix-select bins per pass on large inputs
_MIN_BIN_BITS = 6
_REACH_SLACK = 1e-10  # relative slack on the budget when deciding that it is reached
_FULL_BUDGET = 1e-12  # budget within this relative distance of sum(c) keeps everything
_DEFAULT_TOL = {torch.float64: 1e-10, torch.float32: 1e-6}
_INT_VIEW = {torch.float32: torch.int32, torch.float64: torch.int64}
_ABS_MASK = {torch.float32: 0x7FFFFFFF, torch.float64: 0x7FFFFFFFFFFFFFFF}
_STRUCT = {torch.float32: ("<f", "<i"), torch.float64: ("<d", "<q")}


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


@dataclass
class _Segment:
    """One validated segment: unit values, its cost (scalar or per entry) and summaries."""

    u: Tensor  # (n_j,) float32 or float64, contiguous
    scalar_cost: float | None
    cost: Tensor | None  # (n_j,) same dtype as u, or None for a scalar cost
    total_cost: float
    u_min: float
    u_max: float


# --- reductions ----------------------------------------------------------------------------


def _sum64(x: Tensor) -> Tensor:
    """Sum of a 1-D tensor as a 0-d float64 tensor (float32 chunks, float64 across chunks)."""
    if x.dtype == torch.float64:
        return x.sum()
    n = x.numel()
    body = n - n % _CHUNK
    total = (
        x[:body].view(-1, _CHUNK).sum(1).double().sum()
        if body
        else x.new_zeros((), dtype=torch.float64)
    )
    if body < n:
        total = total + x[body:].double().sum()
    return total


def _dot64(a: Tensor, b: Tensor) -> Tensor:
    """Dot product of two 1-D tensors as a 0-d float64 tensor (float32 chunks)."""
    if a.dtype == torch.float64:
        return torch.dot(a, b)
    n = a.numel()
    body = n - n % _CHUNK
    if body:
        partial = torch.linalg.vecdot(a[:body].view(-1, _CHUNK), b[:body].view(-1, _CHUNK))
        total = partial.double().sum()
    else:
        total = a.new_zeros((), dtype=torch.float64)
    if body < n:
        total = total + torch.dot(a[body:].double(), b[body:].double())
    return total


# --- float helpers ---------------------------------------------------------------------------


def _round_to(x: float, dtype: torch.dtype) -> float:
    """``x`` rounded to the nearest value representable in ``dtype``."""
    if dtype == torch.float64 or not math.isfinite(x):
        return x
    return torch.tensor(x, dtype=dtype).item()


def _to_bits(x: float, dtype: torch.dtype) -> int:
    """Bit pattern of a non-negative float as a signed integer (``-0.0`` maps to 0)."""
    fmt_f, fmt_i = _STRUCT[dtype]
    return struct.unpack(fmt_i, struct.pack(fmt_f, abs(x)))[0] & _ABS_MASK[dtype]


def _from_bits(bits: int, dtype: torch.dtype) -> float:
    """Inverse of :func:`_to_bits`."""
    fmt_f, fmt_i = _STRUCT[dtype]
    return struct.unpack(fmt_f, struct.pack(fmt_i, bits))[0]


# --- validation ------------------------------------------------------------------------------


def _check_positive(name: str, x: float) -> float:
    try:
        value = float(x)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected a positive number, got {x!r}") from exc
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: expected a positive finite number, got {x!r}")
    return value


def _compute_dtype(name: str, t: Tensor) -> torch.dtype:
    if not isinstance(t, Tensor):
        raise ValueError(f"{name}: expected a tensor, got {type(t).__name__}")
    if t.dim() != 1:
        raise ValueError(f"{name}: expected a 1-D tensor, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got {t.dtype}")
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _make_segment(
    u: Tensor, cost: float | Tensor, dtype: torch.dtype, name: str, cost_name: str
) -> _Segment:
    """Validate one segment's unit values and cost and summarise it."""
    u = u.detach().to(dtype).contiguous()
    if u.numel() == 0:
        raise ValueError(f"{name}: empty tensor")
    lo, hi = (float(x) for x in torch.aminmax(u))
    if math.isnan(lo) or math.isnan(hi):
        raise ValueError(f"{name}: contains NaN")
    if not math.isfinite(hi):
        raise ValueError(f"{name}: contains inf")
    if lo < 0:
        raise ValueError(f"{name}: values must be non-negative, got minimum {lo!r}")
    if isinstance(cost, Tensor):
        if cost.dim() == 0:
            cost = float(cost)
        else:
            if cost.shape != u.shape:
                raise ValueError(
                    f"{cost_name}: shape {tuple(cost.shape)} does not match values "
                    f"shape {tuple(u.shape)}"
                )
            if not cost.is_floating_point():
                cost = cost.to(dtype)
            c = cost.detach().to(device=u.device, dtype=dtype).contiguous()
            c_lo, c_hi = (float(x) for x in torch.aminmax(c))
            if not (c_lo > 0 and math.isfinite(c_hi)):
                raise ValueError(
                    f"{cost_name}: costs must be positive and finite, got range [{c_lo}, {c_hi}]"
                )
            total = float(_sum64(c))
            return _Segment(u, None, c, total, lo, hi)
    c_scalar = _check_positive(cost_name, cost)
    return _Segment(u, c_scalar, None, c_scalar * u.numel(), lo, hi)


def _prepare_segments(segments: Segments) -> list[_Segment]:
    if isinstance(segments, Tensor) or not isinstance(segments, Sequence) or not segments:
        raise ValueError("segments: expected a non-empty sequence of (unit_values, cost) pairs")
    dtypes, devices = set(), set()
    for j, seg in enumerate(segments):
        if not (isinstance(seg, tuple | list) and len(seg) == 2):
            raise ValueError(f"segments[{j}]: expected a (unit_values, cost) pair")
        dtypes.add(_compute_dtype(f"segments[{j}] unit values", seg[0]))
        devices.add(seg[0].device)
    if len(devices) > 1:
        raise ValueError(f"segments: all unit values must be on one device, got {devices}")
    dtype = torch.float64 if torch.float64 in dtypes else torch.float32
    return [
        _make_segment(u, c, dtype, f"segments[{j}] unit values", f"segments[{j}] cost")
        for j, (u, c) in enumerate(segments)
    ]


def _check_budget(budget: float, total: float) -> float:
    try:
        k = float(budget)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"budget: expected a number, got {budget!r}") from exc
    if not (math.isfinite(k) and 0 < k <= total * (1 + 1e-9)):
        raise ValueError(f"budget: must lie in (0, sum of costs = {total!r}], got {budget!r}")
    return min(k, total)


def _default_tol(dtype: torch.dtype, tol: float | None) -> float:
    if tol is None:
        return _DEFAULT_TOL[dtype]
    return _check_positive("tol", tol)


def _check_max_iter(max_iter: int) -> int:
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter: expected a positive integer, got {max_iter!r}")
    return max_iter


# --- soft mask -------------------------------------------------------------------------------


def soft_mask(unit_values: Tensor, dual: float, beta: float) -> Tensor:
    """The soft mask ``sigmoid(beta * (u - dual))`` in the input dtype.

    ``sigmoid`` saturates to exactly 0 or 1, so large ``beta * |u - dual|`` neither overflows
    nor gives NaN; ``dual = -inf`` gives all ones.

    Args:
        unit_values: (n,) unit values u.
        dual: lam from :func:`solve_dual` (or :attr:`SoftTopKResult.dual`).
        beta: inverse temperature, > 0.

    Returns:
        (n,) tensor of the same dtype and device as ``unit_values``.
    """
    beta = _check_positive("beta", beta)
    if not isinstance(unit_values, Tensor) or not unit_values.is_floating_point():
        raise ValueError("unit_values: expected a floating-point tensor")
    out = torch.sub(unit_values, dual)
    out.mul_(beta)
    return out.sigmoid_()


# --- hard threshold: radix select on bit patterns ----------------------------------------------


def _bin_costs(
    segs: list[_Segment], base: int, shift: int, nbins: int, dtype: torch.dtype
) -> Tensor:
    """Cost per bit-pattern bin: (nbins + 2,) float64.

    Bin 0 holds everything below ``base``, bins 1..nbins the patterns
    ``[base + (j - 1) * 2**shift, base + j * 2**shift)``, bin nbins + 1 everything above.
    """
    hist = None
    offset = base - (1 << shift)  # pattern ``base`` lands in bin 1 after the shift
    for seg in segs:
        idx = torch.bitwise_and(seg.u.view(_INT_VIEW[dtype]), _ABS_MASK[dtype])
        idx.sub_(offset)
        if shift:
            idx.bitwise_right_shift_(shift)
        idx.clamp_(0, nbins + 1)
        if seg.cost is None:
            counts = torch.bincount(idx, minlength=nbins + 2).to(torch.float64)
            counts.mul_(seg.scalar_cost)
        else:
            # float64 weights: bincount accumulates in the weights' dtype
            counts = torch.bincount(idx, weights=seg.cost.double(), minlength=nbins + 2)
        hist = counts if hist is None else hist.add_(counts)
    assert hist is not None
    return hist


def _radix_threshold(
    segs: list[_Segment], budget: float, dtype: torch.dtype, init: float | None
) -> tuple[float, int]:
    """The hard threshold and the number of passes over the data used."""
    reach = budget * (1 - _REACH_SLACK)
    n = sum(s.u.numel() for s in segs)
    # fewer bins for small inputs: the per-pass cost is then the histogram, not the data
    bits = min(_MAX_BIN_BITS, max(_MIN_BIN_BITS, n.bit_length() - 4))
    passes = 0
    window: tuple[int, int, int] | None = None
    if init is not None and math.isfinite(init) and init >= 0:
        centre = _to_bits(_round_to(init, dtype), dtype)
        window = (max(0, centre - (1 << (bits - 1))), 0, 1 << bits)
    cold = window is None
    while True:
        if window is None:
            cold = True
            lo_bits = _to_bits(min(s.u_min for s in segs), dtype)
            hi_bits = _to_bits(max(s.u_max for s in segs), dtype)
            width = hi_bits - lo_bits + 1
            shift = max(0, (width - 1).bit_length() - bits)
            window = (lo_bits, shift, -(-width // (1 << shift)))
        base, shift, nbins = window
        hist = _bin_costs(segs, base, shift, nbins, dtype)
        passes += 1
        # cost at or above each bin, from the top bin down: (nbins + 2,)
        above = torch.cumsum(torch.flip(hist, (0,)), 0)
        j = int((above >= reach).sum()) - 1  # highest bin whose cost from the top reaches k
        if j <= 0 or j == nbins + 1:
            if cold:  # cannot happen: the cold window spans every value
                raise RuntimeError("hard_threshold: radix select lost the threshold")
            window = None
            continue
        start = base + ((j - 1) << shift)
        if shift == 0:
            return _from_bits(start, dtype), passes
        new_shift = max(0, shift - bits)
        window = (start, new_shift, 1 << (shift - new_shift))


def hard_threshold(segments: Segments, budget: float, *, init: float | None = None) -> float:
    """Unit-value threshold of the hard top-k under a cost budget, over several segments.

    Keeps entries in descending unit value until the cumulative cost first reaches ``budget``;
    the unit value of that entry is the threshold, and the kept set is ``u >= threshold`` in
    every segment (ties at the threshold are all kept). Linear in n, no sort (see the module
    docstring).

    Args:
        segments: ``(unit_values, cost)`` pairs, one per layer; ``cost`` is a python float for
            the whole segment or a tensor of per-entry costs.
        budget: k in (0, total cost].
        init: the previous threshold, to warm-start the search.

    Returns:
        The threshold as a python float.

    Raises:
        ValueError: for malformed segments, negative/NaN/inf values, non-positive costs or a
            budget outside (0, total cost].
    """
    segs = _prepare_segments(segments)
    total = sum(s.total_cost for s in segs)
    k = _check_budget(budget, total)
    return _radix_threshold(segs, k, segs[0].u.dtype, init)[0]


# --- dual solve ------------------------------------------------------------------------------


class _Evaluator:
    """Computes sum c m and sum c m^2 at a given lam, keeping the masks of the last call."""

    def __init__(self, segs: list[_Segment], beta: float) -> None:
        self.segs = segs
        self.beta = beta
        self.masks = [torch.empty_like(s.u) for s in segs]
        self.scratch = [None if s.cost is None else torch.empty_like(s.u) for s in segs]

    def __call__(self, lam: float) -> tuple[float, float]:
        sums = []
        for seg, m, cm in zip(self.segs, self.masks, self.scratch, strict=True):
            torch.sub(seg.u, lam, out=m)
            m.mul_(self.beta)
            m.sigmoid_()
            if seg.cost is None:
                s1 = _sum64(m)
                s2 = _dot64(m, m)
                sums.append(torch.stack((s1, s2)) * seg.scalar_cost)
            else:
                assert cm is not None
                torch.mul(m, seg.cost, out=cm)
                sums.append(torch.stack((_sum64(cm), _dot64(cm, m))))
        s, q = torch.stack(sums).sum(0).tolist()
        return s, q


def _solve(
    segs: list[_Segment],
    budget: float,
    beta: float,
    init: float | None,
    tol: float,
    max_iter: int,
) -> tuple[float, int, _Evaluator | None]:
    """Root lam of sum c sigmoid(beta (u - lam)) = budget; the evaluator holds its masks."""
    dtype = segs[0].u.dtype
    total = sum(s.total_cost for s in segs)
    f = budget / total
    if f >= 1 - _FULL_BUDGET:
        return -math.inf, 0, None
    logit_f = math.log(f) - math.log1p(-f)
    u_min = min(s.u_min for s in segs)
    u_max = max(s.u_max for s in segs)
    # m_i >= f for every i at lo and <= f at hi, so the root lies in [lo, hi]
    lo = u_min - logit_f / beta
    hi = u_max - logit_f / beta
    pad = 4 * math.ulp(max(abs(lo), abs(hi), 1e-300)) + 4 * torch.finfo(dtype).eps * max(
        abs(lo), abs(hi)
    )
    lo, hi = lo - pad, hi + pad
    lam = 0.5 * (lo + hi) if init is None or not math.isfinite(init) else min(max(init, lo), hi)
    evaluate = _Evaluator(segs, beta)
    for it in range(1, max_iter + 1):
        lam = _round_to(lam, dtype)
        s, q = evaluate(lam)
        g = s - budget
        if abs(g) <= tol * budget:
            return lam, it, evaluate
        if g > 0:
            lo = max(lo, lam)
        else:
            hi = min(hi, lam)
        if _round_to(lo, dtype) >= _round_to(hi, dtype) or _next_up(lo, dtype) >= hi:
            logger.debug(
                "solve_dual: bracket at %s resolution, |g|/k = %.3g", dtype, abs(g) / budget
            )
            return lam, it, evaluate
        slope = beta * (s - q)  # -g'(lam) = beta * sum c m (1 - m)
        step = lam + g / slope if slope > 0 else math.nan
        lam = step if lo < step < hi else 0.5 * (lo + hi)
    logger.warning(
        "solve_dual: no convergence in %d iterations (|g|/k = %.3g)", max_iter, abs(g) / budget
    )
    return lam, max_iter, evaluate


def _next_up(x: float, dtype: torch.dtype) -> float:
    """The next representable value above ``x`` in ``dtype``."""
    if dtype == torch.float64:
        return math.nextafter(x, math.inf)
    t = torch.tensor(x, dtype=dtype)
    return torch.nextafter(t, torch.tensor(math.inf, dtype=dtype)).item()


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
        segments: ``(unit_values, cost)`` pairs (see :func:`hard_threshold`).
        budget: k in (0, total cost].
        beta: inverse temperature, > 0.
        init: a starting lam (the previous step's dual); cold starts begin at the hard
            threshold.
        tol: stop when ``|g(lam)| <= tol * budget``; default 1e-10 (float64), 1e-6 (float32).
        max_iter: maximum number of passes.

    Returns:
        ``(lam, passes)``; lam is ``-inf`` when the budget keeps everything.
    """
    beta = _check_positive("beta", beta)
    max_iter = _check_max_iter(max_iter)
    segs = _prepare_segments(segments)
    dtype = segs[0].u.dtype
    tol = _default_tol(dtype, tol)
    k = _check_budget(budget, sum(s.total_cost for s in segs))
    with torch.no_grad():
        if init is None:
            init = _radix_threshold(segs, k, dtype, None)[0]
        lam, iters, _ = _solve(segs, k, beta, init, tol, max_iter)
    return lam, iters


# --- soft top-k with the implicit backward ---------------------------------------------------


class SoftTopKFunction(torch.autograd.Function):
    """Soft top-k mask of ``values`` with the implicit-differentiation backward of DESIGN 1.1.

    ``apply(values, costs, budget, beta, dual_init, threshold_init, tol, max_iter)`` returns
    ``(mask, hard_mask, stats)`` with ``stats = [threshold, dual, iterations]`` (float64). Only
    ``mask`` is differentiable; costs and budget get no gradient:

        dL/dv_j = beta * s_j * (g_j / c_j - sum_i g_i s_i / sum_i c_i s_i),  s = m (1 - m).

    Inputs are validated by :func:`soft_topk`, which is the public entry point.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        values: Tensor,
        costs: Tensor | float,
        budget: float,
        beta: float,
        dual_init: float | None,
        threshold_init: float | None,
        tol: float,
        max_iter: int,
    ) -> tuple[Tensor, Tensor, Tensor]:
        if isinstance(costs, Tensor):
            u = values / costs
            seg = _make_segment(u, costs, values.dtype, "values", "costs")
        else:
            u = values if costs == 1.0 else values / costs
            seg = _make_segment(u, costs, values.dtype, "values", "costs")
        segs = [seg]
        threshold, _ = _radix_threshold(segs, budget, values.dtype, threshold_init)
        start = threshold if dual_init is None else dual_init
        dual, iterations, evaluate = _solve(segs, budget, beta, start, tol, max_iter)
        mask = torch.ones_like(values) if evaluate is None else evaluate.masks[0]
        hard = torch.ge(seg.u, threshold)
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
        beta: float = ctx.beta
        grad_mask = grad_mask.contiguous()
        s = torch.sub(1.0, mask)
        s.mul_(mask)  # (n,) m (1 - m)
        gs = float(_dot64(grad_mask, s))
        if cost is None:
            c = ctx.scalar_cost
            cs = c * float(_sum64(s))
            ratio = gs / cs if cs > 0 else 0.0
            grad = torch.sub(grad_mask, c * ratio)
            grad.mul_(s)
            grad.mul_(beta / c)
        else:
            cs = float(_dot64(cost, s))
            ratio = gs / cs if cs > 0 else 0.0
            grad = torch.div(grad_mask, cost)
            grad.sub_(ratio)
            grad.mul_(s)
            grad.mul_(beta)
        return grad, None, None, None, None, None, None, None


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
) -> SoftTopKResult:
    """Cost-weighted soft top-k of DESIGN 1.1, differentiable w.r.t. ``values``.

    Args:
        values: (n,) non-negative entry values v (|w|, or per-block sums of |w|).
        costs: (n,) positive per-entry costs, or one python float shared by all entries.
        budget: k in (0, sum of costs].
        beta: inverse temperature, > 0.
        dual_init: the previous step's dual, to warm-start the solver (else it starts at the
            hard threshold).
        threshold_init: the previous step's threshold, to warm-start the hard top-k.
        tol: relative budget tolerance; default 1e-10 (float64), 1e-6 (float32).
        max_iter: maximum solver passes.

    Returns:
        A :class:`SoftTopKResult`.

    Raises:
        ValueError: naming the argument, for a non-1-D or non-float tensor, mismatched shapes,
            NaN/inf/negative values, non-positive or non-finite costs, a budget outside
            (0, sum of costs], or a non-positive beta.
    """
    dtype = _compute_dtype("values", values)
    beta = _check_positive("beta", beta)
    max_iter = _check_max_iter(max_iter)
    tol = _default_tol(dtype, tol)
    if isinstance(costs, Tensor) and costs.dim() == 0:
        costs = float(costs)
    if isinstance(costs, Tensor):
        _compute_dtype("costs", costs)
        if costs.shape != values.shape:
            raise ValueError(
                f"costs: shape {tuple(costs.shape)} does not match values shape "
                f"{tuple(values.shape)}"
            )
        costs = costs.detach().to(device=values.device, dtype=dtype)
        # validated here so the total is known before the budget check
        c_lo, c_hi = (float(x) for x in torch.aminmax(costs))
        if not (c_lo > 0 and math.isfinite(c_hi)):
            raise ValueError(f"costs: must be positive and finite, got range [{c_lo}, {c_hi}]")
        total = float(_sum64(costs))
    else:
        costs = _check_positive("costs", costs)
        total = costs * values.numel()
    if values.numel() == 0:
        raise ValueError("values: empty tensor")
    k = _check_budget(budget, total)
    input_dtype = values.dtype
    mask, hard, stats = SoftTopKFunction.apply(
        values.to(dtype), costs, k, beta, dual_init, threshold_init, tol, max_iter
    )
    threshold, dual, iterations = stats.tolist()
    return SoftTopKResult(
        mask=mask.to(input_dtype),
        hard_mask=hard,
        threshold=threshold,
        dual=dual,
        iterations=int(iterations),
    )

"""Cost-weighted soft top-k under a budget (Spartan, Tai, Tian and Lim, NeurIPS 2022).

Each maskable entry i has a unit value u_i = v_i / c_i (value per unit of cost, v_i >= 0,
c_i > 0). For a budget k in (0, sum_i c_i] and an inverse temperature beta > 0 the soft mask is

    m_i = sigmoid(beta * (u_i - lam)),   with lam the root of  g(lam) = sum_i c_i m_i - k,

and the hard top-k keeps the entries of largest unit value until their cumulative cost first
reaches k (DESIGN 1.1). Ties at the threshold are all kept, so ``hard_mask == (u >= threshold)``
always holds and the kept cost is at least k (it overshoots by less than the cost of the entries
tied at the threshold, usually one entry). A relative slack of 1e-10 on k absorbs rounding, so
``k = 0.05 * 1000`` keeps 50 unit-cost entries, not 51.

Solvers (both linear in n, no full sort):

- ``hard_threshold`` is an exact selection. One pass keys every entry against a window of unit
  values with integer operations on the IEEE bit patterns (non-negative floats order like
  their bit patterns): -1 below, 0 inside, 1 above. The key sum and a blockwise product (zero
  only for blocks holding an inside entry) give the cost above the window and locate the few
  entries inside it, which are then sorted to place the threshold exactly. The window comes
  from the previous threshold when warm-started (about +-0.1% around it) and otherwise from a
  strided sample of about 16 sqrt(n) entries (2.5 standard errors of the rank either side).
  If the threshold lies outside the window the window moves (a sample-based one when the warm
  one missed, else a wider one); if the window holds too many entries the selection recurses
  into them. Typically one pass warm, one pass plus a small sample sort cold.
- ``solve_dual`` runs safeguarded Newton on lam (g'(lam) = -beta * sum_i c_i m_i (1 - m_i))
  inside the exact bracket [min u - logit(f) / beta, max u - logit(f) / beta], f = k / sum c,
  bisecting whenever a Newton step leaves the bracket or fails to halve |g|. One pass per
  iteration computes m and the sums of c m and c m^2; the budget sum is accurate (float32
  partial sums over chunks, then float64), the slope needs only the input precision. A final
  Newton step is accepted without a verification pass when a Taylor bound already guarantees
  the tolerance. Warm-started from the previous step's lam it needs 1-2 passes; cold it starts
  from a dual solved on the sample and needs about 3.

Kernels: on contiguous float32 CPU tensors each pass above (the window keying, the dual's
sums, the final soft and hard masks, the backward) runs as one fused C kernel from
:mod:`spartan_core.native`; elsewhere the same passes run as PyTorch operations. The two agree
to float32 rounding and select the same threshold.

Segments: the Sparsifier keeps one budget over many layers. Functions taking ``segments``
accept a list of ``(unit_values, cost)`` pairs, one per layer, where ``cost`` is a python float
shared by the whole segment or a tensor of per-entry costs; segments are never concatenated.

Numerics: sigmoid saturates to exactly 0 or 1, so beta up to 1e4 and values over 1e-8..1e3 give
no inf or NaN. For ``budget == sum of costs`` every entry is kept, ``dual`` is ``-inf`` and the
mask is all ones (its gradient is zero). Costs with float32 per-entry tensors are accumulated
with float32 partial sums (about 1e-6 relative), so the float32 hard threshold can differ from an
exact float64 computation when the budget falls that close to a cumulative-cost step; unit and
per-segment costs are counted exactly. float16 and bfloat16 inputs are computed in float32.
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

from spartan_core import native

logger = logging.getLogger(__name__)

Segments = Sequence[tuple[Tensor, float | Tensor]]

_CHUNK = 4096  # entries per float32 partial sum before accumulating in float64
_DOT_CHUNK = 1 << 18  # entries per float32 dot product before accumulating in float64
_REACH_SLACK = 1e-10  # relative slack on the budget when deciding that it is reached
_FULL_BUDGET = 1e-12  # budget within this relative distance of sum(c) keeps everything
_DEFAULT_TOL = {torch.float64: 1e-10, torch.float32: 1e-6}
_INT_VIEW = {torch.float32: torch.int32, torch.float64: torch.int64}
_INF_BITS = {torch.float32: 0x7F800000, torch.float64: 0x7FF0000000000000}
_STRUCT = {torch.float32: ("<f", "<i"), torch.float64: ("<d", "<q")}
# warm window: 2**p bit patterns around the previous threshold, about +-0.1% of it
_WARM_BITS = {torch.float32: 14, torch.float64: 43}
_MIN_SAMPLE, _MAX_SAMPLE = 2048, 1 << 17
_SORT_MIN = 2048  # a window of at most max(_SORT_MIN, n / 256) entries is sorted directly
# derivative rounding allowance per entry for the skip-verification bound
_D_SLACK = {torch.float64: 1e-12, torch.float32: 3e-5}


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
        return self.u.view(_INT_VIEW[self.u.dtype])


# --- reductions ----------------------------------------------------------------------------


def _sum64(x: Tensor) -> Tensor:
    """Accurate sum of a 1-D tensor as a 0-d float64 tensor (float32 chunks, then float64)."""
    if x.dtype == torch.float64:
        return x.sum()
    n = x.numel()
    body = n - n % _CHUNK
    if body:
        total = x[:body].view(-1, _CHUNK).sum(1).double().sum()
    else:
        total = x.new_zeros((), dtype=torch.float64)
    if body < n:
        total = total + x[body:].double().sum()
    return total


def _dot64(a: Tensor, b: Tensor) -> Tensor:
    """Accurate dot product of two 1-D tensors as a 0-d float64 tensor.

    float32 inputs: float32 dot products over chunks of 2**18 entries, summed in float64.
    """
    if a.dtype == torch.float64:
        return torch.dot(a, b)
    n = a.numel()
    if n <= _DOT_CHUNK:
        return torch.dot(a, b).double()
    parts = [
        torch.dot(a[i : i + _DOT_CHUNK], b[i : i + _DOT_CHUNK]) for i in range(0, n, _DOT_CHUNK)
    ]
    return torch.stack(parts).double().sum()


def _dot_fast(a: Tensor, b: Tensor) -> Tensor:
    """Dot product in the input precision (about 1e-5 relative in float32), as float64."""
    return torch.dot(a, b).double()


_PRODUCT_CHUNK = 1 << 20  # entries per in-cache product chunk (4 MB in float32)


def _weighted_square_sum(c: Tensor, t: Tensor) -> Tensor:
    """sum_i c_i t_i^2 in the input precision, as a 0-d float64 tensor, without a full-size
    temporary: products are formed chunk by chunk in a cache-sized buffer."""
    n = t.numel()
    buf = torch.empty(min(n, _PRODUCT_CHUNK), dtype=t.dtype, device=t.device)
    parts = []
    for start in range(0, n, _PRODUCT_CHUNK):
        stop = min(n, start + _PRODUCT_CHUNK)
        part = buf[: stop - start]
        torch.mul(c[start:stop], t[start:stop], out=part)
        parts.append(torch.dot(part, t[start:stop]))
    return torch.stack(parts).double().sum()


# --- float helpers ---------------------------------------------------------------------------


def _to_bits(x: float, dtype: torch.dtype) -> int:
    """Bit pattern of a non-negative float as a signed integer (``-0.0`` maps to 0)."""
    fmt_f, fmt_i = _STRUCT[dtype]
    return max(0, struct.unpack(fmt_i, struct.pack(fmt_f, x))[0])


def _from_bits(bits: int, dtype: torch.dtype) -> float:
    """Inverse of :func:`_to_bits`."""
    fmt_f, fmt_i = _STRUCT[dtype]
    return struct.unpack(fmt_f, struct.pack(fmt_i, bits))[0]


# --- validation ------------------------------------------------------------------------------


def _check_positive(name: str, x: object) -> float:
    try:
        value = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected a positive number, got {x!r}") from exc
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: expected a positive finite number, got {x!r}")
    return value


def _compute_dtype(name: str, t: object) -> torch.dtype:
    if not isinstance(t, Tensor):
        raise ValueError(f"{name}: expected a tensor, got {type(t).__name__}")
    if t.dim() != 1:
        raise ValueError(f"{name}: expected a 1-D tensor, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got {t.dtype}")
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _unit_values(u: Tensor, dtype: torch.dtype, name: str) -> tuple[Tensor, float, float]:
    """Check unit values (finite, non-negative) in one min/max pass over their bit patterns."""
    u = u.detach().to(dtype).contiguous()
    if u.numel() == 0:
        raise ValueError(f"{name}: empty tensor")
    lo_bits, hi_bits = (int(x) for x in torch.aminmax(u.view(_INT_VIEW[dtype])))
    if hi_bits >= _INF_BITS[dtype]:
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
    return u, _from_bits(lo_bits, dtype), _from_bits(hi_bits, dtype)


def _check_costs(
    cost: Tensor, n: int, dtype: torch.dtype, device: torch.device, name: str
) -> Tensor:
    if cost.dim() != 1 or cost.numel() != n:
        raise ValueError(f"{name}: shape {tuple(cost.shape)} does not match values shape ({n},)")
    c = cost.detach().to(device=device, dtype=dtype).contiguous()
    c_lo, c_hi = (float(x) for x in torch.aminmax(c))
    if not (c_lo > 0 and math.isfinite(c_hi)):  # NaN fails both comparisons
        raise ValueError(f"{name}: costs must be positive and finite, got range [{c_lo}, {c_hi}]")
    return c


def _make_segment(
    u: Tensor, cost: float | Tensor, dtype: torch.dtype, name: str, cost_name: str
) -> _Segment:
    """Validate one segment's unit values and cost and summarise it."""
    u, lo, hi = _unit_values(u, dtype, name)
    if isinstance(cost, Tensor) and cost.dim() == 0:
        cost = float(cost)
    if isinstance(cost, Tensor):
        c = _check_costs(cost, u.numel(), dtype, u.device, cost_name)
        return _Segment(u, None, c, float(_sum64(c)), lo, hi)
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


def _check_budget(budget: object, total: float) -> float:
    try:
        k = float(budget)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"budget: expected a number, got {budget!r}") from exc
    if not (math.isfinite(k) and 0 < k <= total * (1 + 1e-9)):
        raise ValueError(f"budget: must lie in (0, sum of costs = {total!r}], got {budget!r}")
    return min(k, total)


def _default_tol(dtype: torch.dtype, tol: float | None) -> float:
    if tol is None:
        return _DEFAULT_TOL[dtype]
    return _check_positive("tol", tol)


def _check_max_iter(max_iter: object) -> int:
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter: expected a positive integer, got {max_iter!r}")
    return max_iter


# --- soft mask -------------------------------------------------------------------------------


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
    Bit-for-bit the mask :func:`soft_topk` returns for the same unit values and dual.

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
    if dual == -math.inf:
        return torch.ones_like(unit_values)
    u = unit_values.contiguous()  # the layout soft_topk computes in, so the rounding matches
    return _sigmoid_into(u, dual, beta, torch.empty_like(u))


# --- hard threshold: exact selection by bit-pattern windows ----------------------------------


def _sample(segs: list[_Segment]) -> tuple[Tensor, Tensor]:
    """A strided sample of the unit values with the cost each sampled entry stands for.

    Returns (values, weights), both float64 and sorted by descending value.
    """
    n = sum(s.n for s in segs)
    size = min(n, max(_MIN_SAMPLE, min(_MAX_SAMPLE, int(16 * math.sqrt(n)))))
    stride = max(1, n // size)
    values, weights = [], []
    for seg in segs:
        start = min(stride // 2, seg.n - 1)
        u = seg.u[start::stride]
        scale = seg.n / u.numel()
        values.append(u.double())
        if seg.cost is None:
            weights.append(torch.full_like(values[-1], seg.scalar_cost * scale))
        else:
            weights.append(seg.cost[start::stride].double() * scale)
    v = torch.cat(values)
    order = torch.argsort(v, descending=True)
    return v[order].cpu(), torch.cat(weights)[order].cpu()


def _sample_window(
    sample: tuple[Tensor, Tensor], reach: float, total: float, dtype: torch.dtype
) -> tuple[int, int]:
    """A bit-pattern window (start, log2 width) likely to hold the threshold."""
    values, weights = sample
    size = values.numel()
    cum = torch.cumsum(weights, 0)
    i = min(int((cum < reach).sum()), size - 1)  # first sample where the budget is reached
    f = min(max(reach / total, 0.0), 1.0)
    margin = int(2.5 * math.sqrt(size * f * (1 - f))) + 4  # standard errors of the rank
    lo_bits = 0 if i + margin >= size else _to_bits(float(values[i + margin]), dtype)
    hi_bits = (
        _INF_BITS[dtype] if i - margin <= 0 else _to_bits(float(values[i - margin]), dtype) + 1
    )
    return lo_bits, max(0, (hi_bits - lo_bits - 1).bit_length())


_BLOCK = 32  # entries per block when locating the few keys inside a window


def _inside_indices(key: Tensor) -> Tensor:
    """Indices of the zero entries of a key in {-1, 0, 1}, without scanning it entry by entry.

    A block's product of keys is 0 exactly when it holds a zero, so one reduction over blocks
    of 32 locates the (few) blocks to search; when many blocks hold zeros a direct scan is
    cheaper.
    """
    n = key.numel()
    body = n - n % _BLOCK
    found = []
    if body:
        products = key[:body].view(-1, _BLOCK).prod(1, dtype=key.dtype)  # (n / 32,)
        blocks = torch.nonzero(products == 0).view(-1)
        if blocks.numel() * _BLOCK * 8 > n:
            return torch.nonzero(key == 0).view(-1)
        if blocks.numel():
            offsets = torch.arange(_BLOCK, device=key.device)
            candidates = (blocks[:, None] * _BLOCK + offsets).view(-1)
            found.append(candidates[key[candidates] == 0])
    if body < n:
        tail = torch.arange(body, n, device=key.device)
        found.append(tail[key[body:] == 0])
    if not found:
        return torch.empty(0, dtype=torch.long, device=key.device)
    return torch.cat(found)


def _cost_above(cost: Tensor, key: Tensor) -> Tensor:
    """sum of ``cost`` where ``key == 1`` (key in {-1, 0, 1}), in cache-sized chunks."""
    n = key.numel()
    buf = torch.empty(min(n, _PRODUCT_CHUNK), dtype=cost.dtype, device=cost.device)
    parts = []
    for start in range(0, n, _PRODUCT_CHUNK):
        stop = min(n, start + _PRODUCT_CHUNK)
        part = buf[: stop - start]
        part.copy_(key[start:stop]).clamp_(min=0)  # 1 above, 0 elsewhere
        parts.append(torch.dot(part, cost[start:stop]))
    return torch.stack(parts).double().sum()


def _native_cap(n: int) -> int:
    """Inside entries the native partition collects before leaving a segment to PyTorch."""
    return max(4 * _SORT_MIN, n >> 4)


@dataclass
class _Split:
    """Where the entries of all segments fall relative to a window."""

    above_cost: float  # cost of the entries above the window
    values: Tensor  # (w,) unit values inside the window, all segments
    costs: Tensor  # (w,) their costs

    @property
    def window_cost(self) -> float:
        return float(self.costs.double().sum())


def _partition(segs: list[_Segment], keys: list[Tensor], start: int, log_width: int) -> _Split:
    """Split every segment by the window of bit patterns ``[start, start + 2**log_width)``.

    One pass keys each entry -1 (below), 0 (inside) or 1 (above); the cost above comes from
    the key sum (count above - count below) and the inside count; the inside entries are
    extracted.
    """
    balances, values, costs = [], [], []
    above_cost = 0.0
    for seg, key in zip(segs, keys, strict=True):
        if native.usable(seg.u, seg.cost):
            above, idx = native.partition(seg.u, seg.cost, start, log_width, _native_cap(seg.n))
            if idx is not None:
                above_cost += above if seg.cost is not None else above * seg.scalar_cost
                values.append(seg.u[idx])
                costs.append(
                    torch.full_like(values[-1], seg.scalar_cost)
                    if seg.cost is None
                    else seg.cost[idx]
                )
                balances.append(None)
                continue
        torch.sub(seg.bits, start, out=key)
        if log_width:
            key.bitwise_right_shift_(log_width)  # arithmetic shift: negatives stay negative
        key.clamp_(-1, 1)
        if seg.cost is None:
            balances.append(key.sum(dtype=key.dtype).double() * seg.scalar_cost)
        else:
            balances.append(_cost_above(seg.cost, key))
        idx = _inside_indices(key)
        values.append(seg.u[idx])
        costs.append(
            torch.full_like(values[-1], seg.scalar_cost) if seg.cost is None else seg.cost[idx]
        )
    computed = [b for b in balances if b is not None]
    sums = iter(torch.stack(computed).cpu().tolist() if computed else [])
    for seg, pending, inside in zip(segs, balances, values, strict=True):
        if pending is None:
            continue  # counted by the native kernel
        balance = next(sums)
        if seg.cost is None:
            # balance = c * (above - below) and above + below = n - inside
            above_cost += 0.5 * (balance + seg.scalar_cost * (seg.n - inside.numel()))
        else:
            above_cost += balance
    return _Split(above_cost, torch.cat(values), torch.cat(costs))


def _select(
    segs: list[_Segment],
    reach: float,
    dtype: torch.dtype,
    init: float | None,
    keys: list[Tensor] | None = None,
    sample: tuple[Tensor, Tensor] | None = None,
) -> tuple[float, int, tuple[Tensor, Tensor] | None]:
    """Largest unit value t whose cost at or above it reaches ``reach``.

    Returns (t, passes over the data, the sample drawn if any).
    """
    total = sum(s.total_cost for s in segs)
    n = sum(s.n for s in segs)
    if reach >= total * (1 - _FULL_BUDGET):
        return min(s.u_min for s in segs), 0, sample
    if keys is None:
        # segments are keyed one after another: one scratch buffer the size of the largest
        scratch = torch.empty(
            max(s.n for s in segs), dtype=_INT_VIEW[dtype], device=segs[0].u.device
        )
        keys = [scratch[: s.n] for s in segs]
    window: tuple[int, int] | None = None
    if init is not None and math.isfinite(init) and init >= 0:
        p = _WARM_BITS[dtype]
        window = (max(0, _to_bits(init, dtype) - (1 << (p - 1))), p)
    moves = 0
    passes = 0
    while True:
        if window is None:
            if sample is None:
                sample = _sample(segs)
            window = _sample_window(sample, reach, total, dtype)
        start, log_width = window
        split = _partition(segs, keys, start, log_width)
        passes += 1
        above = split.above_cost >= reach
        below = split.above_cost + split.window_cost < reach
        if not (above or below):
            break
        moves += 1
        width = log_width + 3
        if moves == 1 and sample is None:
            window = None  # the warm window missed: take one from a sample
        elif moves > 8:
            # rounding of per-entry float32 costs can make windows disagree: take everything
            window = (0, _INF_BITS[dtype].bit_length())
        elif above:
            window = (min(start + (1 << log_width), _INF_BITS[dtype]), width)
        else:
            window = (max(0, start - (1 << width)), width)
    values, costs = split.values, split.costs
    remaining = reach - split.above_cost
    if values.numel() > max(_SORT_MIN, n >> 8) and values.numel() < n:
        sub = [
            _Segment(
                values, None, costs, float(_sum64(costs)), float(values.min()), float(values.max())
            )
        ]
        t, sub_passes, _ = _select(sub, remaining, dtype, None)
        return t, passes + sub_passes, sample
    order = torch.argsort(values, descending=True, stable=True)
    cum = torch.cumsum(costs[order].double(), 0)
    first = min(int((cum < remaining).sum()), values.numel() - 1)
    return float(values[order[first]]), passes, sample


def hard_threshold(segments: Segments, budget: float, *, init: float | None = None) -> float:
    """Unit-value threshold of the hard top-k under a cost budget, over several segments.

    Keeps entries in descending unit value until the cumulative cost first reaches ``budget``;
    the unit value of that entry is the threshold, and the kept set is ``u >= threshold`` in
    every segment (ties at the threshold are all kept). Linear in n, no full sort (see the module
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
    k = _check_budget(budget, sum(s.total_cost for s in segs))
    with torch.no_grad():
        return _select(segs, k * (1 - _REACH_SLACK), segs[0].u.dtype, init)[0]


def top_threshold_unchecked(u: Tensor, count: int, *, init: float | None = None) -> float:
    """The unit value of the ``count``-th largest entry of ``u`` (``u >= t`` keeps at least
    ``count``), as :func:`hard_threshold` with unit costs, but without its validation pass:
    for unit values the caller has just produced (contiguous, finite, non-negative, no -0.0).
    """
    n = u.numel()
    seg = _Segment(u.view(-1), 1.0, None, float(n), 0.0, math.inf)
    with torch.no_grad():
        return _select([seg], float(count) * (1 - _REACH_SLACK), u.dtype, init)[0]


# --- dual solve ------------------------------------------------------------------------------


class _Evaluator:
    """Evaluates sum c m and sum c m (1 - m) at a given lam.

    With ``buffers`` (one per segment) the masks of the last evaluation are kept there;
    without, one scratch buffer the size of the largest segment serves every segment in turn
    (for many layers it stays in cache) and no masks are kept.
    """

    def __init__(self, segs: list[_Segment], beta: float, buffers: list[Tensor] | None) -> None:
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
                sums.append(torch.stack((_sum64(m) * c, _dot_fast(m, m) * c)))
            else:
                sums.append(torch.stack((_dot64(seg.cost, m), _weighted_square_sum(seg.cost, m))))
        if sums:
            torch_kept, torch_squares = torch.stack(sums).sum(0).tolist()
            kept, squares = kept + torch_kept, squares + torch_squares
        return kept, kept - squares


def _distinct(a: float, b: float, beta: float, dtype: torch.dtype) -> bool:
    """Whether lam = a and lam = b can give different masks in ``dtype``."""
    x = torch.tensor([0.5 * beta * a, 0.5 * beta * b], dtype=torch.float64).to(dtype)
    return bool(torch.nextafter(x[0], x[1]) != x[1]) and bool(x[0] != x[1])


def _solve(
    segs: list[_Segment],
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
    if f >= 1 - _FULL_BUDGET:
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


def _sample_dual(sample: tuple[Tensor, Tensor], budget: float, beta: float) -> float:
    """lam solved on a sample: a cold start for :func:`_solve`."""
    values, weights = sample
    seg = _Segment(
        values, None, weights, float(weights.sum()), float(values.min()), float(values.max())
    )
    scale = seg.total_cost
    lam, _, _ = _solve([seg], min(budget, scale) * (1 - 1e-12), beta, None, 1e-6, 60)
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
        segments: ``(unit_values, cost)`` pairs (see :func:`hard_threshold`).
        budget: k in (0, total cost].
        beta: inverse temperature, > 0.
        init: a starting lam (the previous step's dual); cold starts begin at a dual solved on
            a small sample of the values.
        tol: stop when ``|g(lam)| <= tol * budget``; default 1e-10 (float64), 1e-6 (float32).
        max_iter: maximum number of passes.

    Returns:
        ``(lam, passes)``; lam is ``-inf`` when the budget keeps everything.

    Raises:
        ValueError: as :func:`hard_threshold`, and for a non-positive beta, tol or max_iter.
    """
    beta = _check_positive("beta", beta)
    max_iter = _check_max_iter(max_iter)
    segs = _prepare_segments(segments)
    dtype = segs[0].u.dtype
    tol = _default_tol(dtype, tol)
    k = _check_budget(budget, sum(s.total_cost for s in segs))
    with torch.no_grad():
        if init is None and k < sum(s.total_cost for s in segs) * (1 - _FULL_BUDGET):
            init = _sample_dual(_sample(segs), k, beta)
        lam, iters, _ = _solve(segs, k, beta, init, tol, max_iter)
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
    beta = _check_positive("beta", beta)
    max_iter = _check_max_iter(max_iter)
    segs = _prepare_segments(segments)
    dtype = segs[0].u.dtype
    tol = _default_tol(dtype, tol)
    total = sum(s.total_cost for s in segs)
    k = _check_budget(budget, total)
    with torch.no_grad():
        threshold, _, sample = _select(segs, k * (1 - _REACH_SLACK), dtype, threshold_init)
        init = dual_init
        if init is None and k < total * (1 - _FULL_BUDGET):
            init = _sample_dual(sample if sample is not None else _sample(segs), k, beta)
        lam, iters, _ = _solve(segs, k, beta, init, tol, max_iter)
    return threshold, lam, iters


# --- soft top-k with the implicit backward ---------------------------------------------------


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
            if lo_bits >= 0 and hi_bits < _INF_BITS[dtype]:
                u, lo, hi = mask, _from_bits(lo_bits, dtype), _from_bits(hi_bits, dtype)
            else:  # raises, or makes -0.0 entries +0.0
                u, lo, hi = _unit_values(mask, dtype, "values")
        else:
            u = values if cost is None and costs == 1.0 else values / costs
            u, lo, hi = _unit_values(u, dtype, "values")
        if cost is None:
            seg = _Segment(u, float(costs), None, total, lo, hi)
        else:
            seg = _Segment(u, None, cost, total, lo, hi)
        segs = [seg]
        if hard is None:
            hard = torch.empty(values.shape, dtype=torch.bool, device=values.device)
        # the PyTorch path keys the selection in the mask buffer, then keeps the masks there
        keys = None if fused else [mask.view(_INT_VIEW[dtype])]
        threshold, _, sample = _select(
            segs, budget * (1 - _REACH_SLACK), dtype, threshold_init, keys=keys
        )
        if dual_init is not None:
            start = dual_init
        elif sample is not None:
            start = _sample_dual(sample, budget, beta)
        else:
            start = threshold
        buffers = None if fused else [mask]
        dual, iterations, evaluate = _solve(segs, budget, beta, start, tol, max_iter, buffers)
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
        gs, ss = torch.stack((_dot_fast(g, grad), _sum64(grad))).tolist()
        ratio = gs / ss if ss > 0 else 0.0  # c * (sum g s / sum c s)
        scale = beta / scalar_cost
        if abs(ratio) > 1e-20:
            # s (g - ratio) * scale = (-ratio * scale) * s * (1 - g / ratio)
            return grad.addcmul_(grad, g, value=-1.0 / ratio).mul_(-ratio * scale)
        return grad.mul_(torch.sub(g, ratio)).mul_(scale)
    n = m.numel()
    chunk = min(n, _PRODUCT_CHUNK)
    s = torch.empty(chunk, dtype=m.dtype, device=m.device)
    parts = []
    for start in range(0, n, _PRODUCT_CHUNK):
        stop = min(n, start + _PRODUCT_CHUNK)
        m_part, s_part = m[start:stop], s[: stop - start]
        torch.addcmul(m_part, m_part, m_part, value=-1.0, out=s_part)  # m (1 - m)
        c_s = torch.dot(cost[start:stop], s_part)
        parts.append(torch.stack((torch.dot(g[start:stop], s_part), c_s)).double())
    gs, cs = torch.stack(parts).sum(0).tolist()
    ratio = gs / cs if cs > 0 else 0.0
    out = torch.empty_like(m)
    for start in range(0, n, _PRODUCT_CHUNK):
        stop = min(n, start + _PRODUCT_CHUNK)
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
    dtype = _compute_dtype("values", values)
    beta = _check_positive("beta", beta)
    max_iter = _check_max_iter(max_iter)
    tol = _default_tol(dtype, tol)
    if values.numel() == 0:
        raise ValueError("values: empty tensor")
    if isinstance(costs, Tensor) and costs.dim() == 0:
        costs = float(costs)
    if isinstance(costs, Tensor):
        _compute_dtype("costs", costs)
        costs = _check_costs(costs, values.numel(), dtype, values.device, "costs")
        total = float(_sum64(costs))
    else:
        costs = _check_positive("costs", costs)
        total = costs * values.numel()
    k = _check_budget(budget, total)
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

"""The hard top-k threshold under a cost budget: an exact selection in linear time.

Keeps the entries of largest unit value until their cumulative cost first reaches the budget
k (DESIGN 1.1); ties at the threshold are all kept, so the kept set is ``u >= threshold``.

One pass keys every entry against a window of unit values with integer operations on the IEEE
bit patterns (non-negative floats order like their bit patterns): -1 below, 0 inside, 1 above.
The key sum and a blockwise product (zero only for blocks holding an inside entry) give the
cost above the window and locate the few entries inside it, which are then sorted to place the
threshold exactly. The window comes from the previous threshold when warm-started (about
+-0.1% around it) and otherwise from a strided sample of about 16 sqrt(n) entries (2.5
standard errors of the rank either side). If the threshold lies outside the window the window
moves (a sample-based one when the warm one missed, else a wider one); if the window holds too
many entries the selection recurses into them. Typically one pass warm, one pass plus a small
sample sort cold. On contiguous float32 CPU tensors the keying runs as one fused C kernel
(:mod:`spartan_core.native`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from spartan_core import native
from spartan_core.numerics import INF_BITS, INT_VIEW, PRODUCT_CHUNK, sum64, to_bits
from spartan_core.segments import (
    FULL_BUDGET,
    REACH_SLACK,
    Segment,
    Segments,
    check_budget,
    prepare_segments,
)

# warm window: 2**p bit patterns around the previous threshold, about +-0.1% of it
_WARM_BITS = {torch.float32: 14, torch.float64: 43}
_MIN_SAMPLE, _MAX_SAMPLE = 2048, 1 << 17
_SORT_MIN = 2048  # a window of at most max(_SORT_MIN, n / 256) entries is sorted directly
_BLOCK = 32  # entries per block when locating the few keys inside a window


def draw_sample(segs: list[Segment]) -> tuple[Tensor, Tensor]:
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
    lo_bits = 0 if i + margin >= size else to_bits(float(values[i + margin]), dtype)
    hi_bits = INF_BITS[dtype] if i - margin <= 0 else to_bits(float(values[i - margin]), dtype) + 1
    return lo_bits, max(0, (hi_bits - lo_bits - 1).bit_length())


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
    buf = torch.empty(min(n, PRODUCT_CHUNK), dtype=cost.dtype, device=cost.device)
    parts = []
    for start in range(0, n, PRODUCT_CHUNK):
        stop = min(n, start + PRODUCT_CHUNK)
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


def _partition(segs: list[Segment], keys: list[Tensor], start: int, log_width: int) -> _Split:
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


def select(
    segs: list[Segment],
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
    if reach >= total * (1 - FULL_BUDGET):
        return min(s.u_min for s in segs), 0, sample
    if keys is None:
        # segments are keyed one after another: one scratch buffer the size of the largest
        scratch = torch.empty(
            max(s.n for s in segs), dtype=INT_VIEW[dtype], device=segs[0].u.device
        )
        keys = [scratch[: s.n] for s in segs]
    window: tuple[int, int] | None = None
    if init is not None and math.isfinite(init) and init >= 0:
        p = _WARM_BITS[dtype]
        window = (max(0, to_bits(init, dtype) - (1 << (p - 1))), p)
    moves = 0
    passes = 0
    while True:
        if window is None:
            if sample is None:
                sample = draw_sample(segs)
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
            window = (0, INF_BITS[dtype].bit_length())
        elif above:
            window = (min(start + (1 << log_width), INF_BITS[dtype]), width)
        else:
            window = (max(0, start - (1 << width)), width)
    values, costs = split.values, split.costs
    remaining = reach - split.above_cost
    if values.numel() > max(_SORT_MIN, n >> 8) and values.numel() < n:
        sub = [
            Segment(
                values, None, costs, float(sum64(costs)), float(values.min()), float(values.max())
            )
        ]
        t, sub_passes, _ = select(sub, remaining, dtype, None)
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
    segs = prepare_segments(segments)
    k = check_budget(budget, sum(s.total_cost for s in segs))
    with torch.no_grad():
        return select(segs, k * (1 - REACH_SLACK), segs[0].u.dtype, init)[0]


def top_threshold_unchecked(u: Tensor, count: int, *, init: float | None = None) -> float:
    """The unit value of the ``count``-th largest entry of ``u`` (``u >= t`` keeps at least
    ``count``), as :func:`hard_threshold` with unit costs, but without its validation pass:
    for unit values the caller has just produced (contiguous, finite, non-negative, no -0.0).
    """
    n = u.numel()
    seg = Segment(u.view(-1), 1.0, None, float(n), 0.0, math.inf)
    with torch.no_grad():
        return select([seg], float(count) * (1 - REACH_SLACK), u.dtype, init)[0]

"""Accurate float32 reductions and IEEE bit patterns, shared by the soft top-k solvers.

float32 sums are formed in float32 over chunks, then accumulated in float64; non-negative
floats order like their bit patterns, which the hard threshold's selection keys on.
"""

from __future__ import annotations

import struct

import torch
from torch import Tensor

_CHUNK = 4096  # entries per float32 partial sum before accumulating in float64
_DOT_CHUNK = 1 << 18  # entries per float32 dot product before accumulating in float64
PRODUCT_CHUNK = 1 << 20  # entries per in-cache product chunk (4 MB in float32)
INT_VIEW = {torch.float32: torch.int32, torch.float64: torch.int64}
INF_BITS = {torch.float32: 0x7F800000, torch.float64: 0x7FF0000000000000}
_STRUCT = {torch.float32: ("<f", "<i"), torch.float64: ("<d", "<q")}


def sum64(x: Tensor) -> Tensor:
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


def dot64(a: Tensor, b: Tensor) -> Tensor:
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


def dot_fast(a: Tensor, b: Tensor) -> Tensor:
    """Dot product in the input precision (about 1e-5 relative in float32), as float64."""
    return torch.dot(a, b).double()


def weighted_square_sum(c: Tensor, t: Tensor) -> Tensor:
    """sum_i c_i t_i^2 in the input precision, as a 0-d float64 tensor, without a full-size
    temporary: products are formed chunk by chunk in a cache-sized buffer."""
    n = t.numel()
    buf = torch.empty(min(n, PRODUCT_CHUNK), dtype=t.dtype, device=t.device)
    parts = []
    for start in range(0, n, PRODUCT_CHUNK):
        stop = min(n, start + PRODUCT_CHUNK)
        part = buf[: stop - start]
        torch.mul(c[start:stop], t[start:stop], out=part)
        parts.append(torch.dot(part, t[start:stop]))
    return torch.stack(parts).double().sum()


def to_bits(x: float, dtype: torch.dtype) -> int:
    """Bit pattern of a non-negative float as a signed integer (``-0.0`` maps to 0)."""
    fmt_f, fmt_i = _STRUCT[dtype]
    return max(0, struct.unpack(fmt_i, struct.pack(fmt_f, x))[0])


def from_bits(bits: int, dtype: torch.dtype) -> float:
    """Inverse of :func:`to_bits`."""
    fmt_f, fmt_i = _STRUCT[dtype]
    return struct.unpack(fmt_f, struct.pack(fmt_i, bits))[0]

"""Fused CPU kernels for Spartan's hot loops, compiled from ``kernels.c`` on first use.

Eager PyTorch runs each elementwise step of the mask update and of the masked weight's
backward as its own pass over memory; these kernels do each job in one pass (see
``kernels.c``). They cover float32, contiguous CPU tensors; everything else (CUDA, float64,
block masks) takes the PyTorch code they replace, which stays the reference and is tested
against them.

The shared library is built with the system C compiler (``$CC``, else ``cc``) with OpenMP and
``-march=native`` (falling back to a single-threaded, then a generic build where the compiler
refuses those flags) into ``$SPARTAN_NATIVE_CACHE`` (default ``~/.cache/spartan``), keyed by a
hash of the source, the flags and the CPU, and reused by every later process. Building takes
about a second; without a compiler the PyTorch code runs (a warning is logged once).
``SPARTAN_NATIVE=0`` turns the kernels off; :func:`enabled` does the same in code.

Writing into an existing tensor bumps its autograd version counter, as an in-place PyTorch
operation would, so a mask overwritten while a graph still needs it is an error at backward.

Threads: each call uses ``torch.get_num_threads()`` threads of the OpenMP runtime that PyTorch
itself loaded, and reductions are summed in a fixed order, so results depend only on the
thread count.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor
from torch.autograd.graph import increment_version

from spartan_core.device import all_on_cpu
from spartan_core.native import build

_SOURCE = Path(__file__).with_name("kernels.c")
_COMMON = ["-O3", "-fno-math-errno", "-ffp-contract=off", "-shared", "-fPIC"]
# tried in order: compilers without OpenMP (Apple clang) or -march=native still get a build
_FLAG_SETS = (
    ["-march=native", "-fopenmp", *_COMMON],
    ["-march=native", "-fopenmp-simd", *_COMMON],
    ["-fopenmp-simd", *_COMMON],
)
_LIBS = ["-lm"]
MAX_THREADS = 256  # kernels.c MAX_THREADS

_P, _F, _I, _L = ctypes.c_void_p, ctypes.c_float, ctypes.c_int, ctypes.c_int64
_SIGNATURES = {
    "sp_abs_scale": [_P, _P, _L, _F, _I, _P],
    "sp_divide": [_P, _P, _P, _L, _I, _P],
    "sp_partition": [_P, _P, _L, ctypes.c_int32, _I, _I, _P, _P, _L, _P],
    "sp_sigmoid_sums": [_P, _P, _L, _F, _F, _P, _I, _P],
    "sp_fill_masks": [_P, _L, _F, _F, _F, _P, _P, _I, _P],
    "sp_masked_forward": [_P, _P, _P, _P, _L, _I],
    "sp_soft_backward": [_P, _P, _P, _F, _P, _L, _I, _P],
    "sp_dual_add": [_P, _P, _P, _F, _I, _L, _I],
    "sp_topk_backward_sums": [_P, _P, _P, _L, _I, _P],
    "sp_topk_backward_apply": [_P, _P, _P, _F, _F, _P, _L, _I],
    "sp_raise": [_P, _L, _F, _F, _I, _P],
    "sp_ge": [_P, _L, _F, _P, _I, _P],
}

_switch = {"on": build.switched_on()}


@functools.cache
def _library() -> ctypes.CDLL | None:
    signatures = {name: (argtypes, None) for name, argtypes in _SIGNATURES.items()}
    return build.load(_SOURCE, _FLAG_SETS, signatures, _LIBS)


def available() -> bool:
    """Whether the kernels are switched on and the library is built and loaded."""
    return _switch["on"] and _library() is not None


@contextlib.contextmanager
def enabled(on: bool) -> Iterator[None]:
    """Switch the kernels on or off inside the block (tests compare both paths)."""
    previous = _switch["on"]
    _switch["on"] = on
    try:
        yield
    finally:
        _switch["on"] = previous


def usable(*tensors: Tensor | None) -> bool:
    """Whether the kernels can take these tensors: float32 (bool/uint8 masks), contiguous, CPU."""
    if not _switch["on"] or not all_on_cpu(*tensors):
        return False
    for t in tensors:
        if t is None:
            continue
        if not t.is_contiguous() or t.dtype not in (torch.float32, torch.uint8, torch.bool):
            return False
    return _library() is not None


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _threads() -> int:
    return max(1, min(MAX_THREADS, torch.get_num_threads()))


def _out(size: int) -> ctypes.Array:
    return (ctypes.c_double * size)()


def abs_scale(w: Tensor, out: Tensor, scale: float) -> tuple[float, int, int]:
    """out = |w| * scale; returns (sum |w|, min and max bit patterns of out)."""
    stats = _out(3)
    _library().sp_abs_scale(_ptr(w), _ptr(out), w.numel(), scale, _threads(), stats)
    increment_version(out)
    return stats[0], int(stats[1]), int(stats[2])


def raise_to(u: Tensor, threshold: float, boost: float) -> int:
    """u = boost where u >= threshold, in place; returns how many were raised."""
    raised = (ctypes.c_int64 * 1)()
    _library().sp_raise(_ptr(u), u.numel(), threshold, boost, _threads(), raised)
    increment_version(u)
    return int(raised[0])


def ge(u: Tensor, threshold: float, hard: Tensor) -> int:
    """hard = u >= threshold; returns the count kept."""
    kept = (ctypes.c_int64 * 1)()
    _library().sp_ge(_ptr(u), u.numel(), threshold, _ptr(hard), _threads(), kept)
    increment_version(hard)
    return int(kept[0])


def float_of_bits(bits: int) -> float:
    """The float32 whose bit pattern is ``bits``."""
    return ctypes.c_float.from_buffer(ctypes.c_int32(bits)).value


def divide(v: Tensor, c: Tensor, out: Tensor) -> tuple[int, int]:
    """out = v / c; returns the min and max signed bit patterns of out (for validation)."""
    bits = (ctypes.c_int64 * 2)()
    _library().sp_divide(_ptr(v), _ptr(c), _ptr(out), v.numel(), _threads(), bits)
    increment_version(out)
    return bits[0], bits[1]


def partition(
    u: Tensor, cost: Tensor | None, start: int, log_width: int, cap: int
) -> tuple[float, Tensor | None]:
    """Cost (or count) of entries above the window of bit patterns ``[start, start + 2**lw)``
    and the indices of the entries inside it, or None when there are more than about ``cap``.
    """
    nt = _threads()
    per_thread = cap // nt + 1
    idx = torch.empty(nt * per_thread, dtype=torch.int64)
    counts = torch.zeros(MAX_THREADS, dtype=torch.int64)
    result = _out(2)
    shift = min(log_width, 31)
    _library().sp_partition(
        _ptr(u),
        _ptr(cost),
        u.numel(),
        start,
        shift,
        nt,
        result,
        _ptr(idx),
        per_thread,
        _ptr(counts),
    )
    used = counts[: int(result[1])].tolist()
    if max(used) > per_thread:
        return result[0], None
    parts = [idx[t * per_thread : t * per_thread + c] for t, c in enumerate(used) if c]
    inside = torch.cat(parts) if parts else idx[:0]
    return result[0], inside


def sigmoid_sums(
    u: Tensor, cost: Tensor | None, a: float, b: float, out: Tensor | None
) -> tuple[float, float]:
    """(sum c m, sum c m^2) with m = sigmoid(a * u + b), written to ``out`` when given."""
    sums = _out(2)
    _library().sp_sigmoid_sums(_ptr(u), _ptr(cost), u.numel(), a, b, _ptr(out), _threads(), sums)
    if out is not None:
        increment_version(out)
    return sums[0], sums[1]


def fill_masks(
    u: Tensor, a: float, b: float, threshold: float, soft: Tensor, hard: Tensor
) -> tuple[float, int]:
    """hard = u >= threshold, soft = sigmoid(a * u + b) (soft may be u); returns
    (sum m (1 - m), count of hard)."""
    out = _out(2)
    _library().sp_fill_masks(
        _ptr(u), u.numel(), a, b, threshold, _ptr(soft), _ptr(hard), _threads(), out
    )
    increment_version((soft, hard))
    return out[0], int(out[1])


def masked_forward(w: Tensor, m: Tensor, h: Tensor) -> Tensor:
    """(w * m) * h as a new tensor shaped like w."""
    out = torch.empty_like(w)
    _library().sp_masked_forward(_ptr(w), _ptr(m), _ptr(h), _ptr(out), w.numel(), _threads())
    return out


def soft_backward(grad_out: Tensor, w: Tensor, m: Tensor, coef: float) -> tuple[Tensor, float]:
    """(G * (m + coef * s * |w|), sum (G * w) * s) with s = m (1 - m)."""
    grad = torch.empty_like(w)
    dot = _out(1)
    _library().sp_soft_backward(
        _ptr(grad_out), _ptr(w), _ptr(m), coef, _ptr(grad), w.numel(), _threads(), dot
    )
    return grad, dot[0]


def dual_add(grad: Tensor | None, w: Tensor, m: Tensor, coef: float) -> Tensor:
    """grad + coef * m (1 - m) * sign(w), in place (a new tensor when grad is None)."""
    accumulate = grad is not None
    out = grad if grad is not None else torch.empty_like(w)
    _library().sp_dual_add(
        _ptr(out), _ptr(w), _ptr(m), coef, int(accumulate), w.numel(), _threads()
    )
    if accumulate:
        increment_version(out)
    return out


def topk_backward(
    g: Tensor, m: Tensor, cost: Tensor | None, scale: float, out: Tensor | None = None
) -> Tensor:
    """scale * s * (g / c - sum g s / sum c s) with s = m (1 - m): soft top-k's backward,
    into ``out`` when given (else a new tensor)."""
    sums = _out(2)
    lib = _library()
    lib.sp_topk_backward_sums(_ptr(g), _ptr(m), _ptr(cost), g.numel(), _threads(), sums)
    ratio = sums[0] / sums[1] if sums[1] > 0 else 0.0
    if out is None:
        out = torch.empty_like(m)
    lib.sp_topk_backward_apply(
        _ptr(g), _ptr(m), _ptr(cost), ratio, scale, _ptr(out), g.numel(), _threads()
    )
    return out

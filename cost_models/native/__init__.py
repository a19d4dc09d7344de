"""Sparse x dense CPU kernels for deployed layers, compiled from ``spmm.c`` on first use.

Two kernels (see ``spmm.c``): ``bsr_rows`` (y = x @ W^T for r x c blocks with r a multiple of
8, row layout, no transposes) and ``group_cols`` (yT = W @ xT with W as groups of rows sharing
a column list: CSR for unstructured, block rows for blocks; column layout, what im2col gives),
with ``group_tokens``, its row-layout form for Linear (the transposes done in the kernel).
Built like :mod:`spartan_core.native` (cached, ``SPARTAN_NATIVE=0`` turns them off), but with
floating-point contraction on: inference wants fused multiply-adds, not bit-reproducibility
with another kernel. float32, contiguous, CPU only; :func:`available` tells whether they load.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch
from torch import Tensor

from spartan_core.native import build

_SOURCE = Path(__file__).with_name("spmm.c")
_COMMON = ["-O3", "-fno-math-errno", "-ffp-contract=fast", "-shared", "-fPIC"]
_FLAG_SETS = (
    ["-march=native", "-fopenmp", *_COMMON],
    ["-march=native", *_COMMON],
    _COMMON,
)
_P, _I, _L = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
_SIGNATURES = {
    "sp_bsr_rows": ([_P, _L, _L, _P, _P, _P, _L, _I, _I, _P, _P, _L, _I], ctypes.c_int),
    "sp_group_cols": ([_P, _L, _L, _L, _L, _P, _P, _P, _L, _I, _P, _P, _L, _L, _I], None),
    "sp_group_tokens": ([_P, _L, _L, _L, _P, _P, _P, _L, _I, _P, _P, _L, _L, _P, _P, _L, _I], None),
    "sp_im2col": ([_P, _L, _L, _L, _L, *[_I] * 8, _L, _L, _P, _L, _I], None),
}
ALIGN = 16  # floats: rows of xT padded to 64 bytes load whole cache lines
BSR_ROWS = (8, 16, 24, 32)  # the block heights bsr_rows takes


@functools.cache
def _library() -> ctypes.CDLL | None:
    return build.load(_SOURCE, _FLAG_SETS, _SIGNATURES)


def available() -> bool:
    """Whether the kernels are switched on and the library is built and loaded."""
    return build.switched_on() and _library() is not None


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _threads() -> int:
    return max(1, torch.get_num_threads())


def bsr_rows(
    x: Tensor,
    vals: Tensor,
    row_ptr: Tensor,
    cols: Tensor,
    block: tuple[int, int],
    bias: Tensor | None,
    out_features: int,
) -> Tensor:
    """y (T, out) = x (T, in) @ W^T + bias for W in r x c blocks.

    Args:
        x: (T, in) float32, rows contiguous (row stride may exceed ``in``).
        vals: (n_blocks, c, r) kept blocks, each W's block transposed.
        row_ptr: (out / r + 1,) int64 offsets of each block row's blocks.
        cols: (n_blocks,) int32 block-column indices.
        block: (r, c), r in ``BSR_ROWS``.
        bias: (out,) or None.
    """
    r, c = block
    tokens = x.shape[0]
    y = torch.empty(tokens, out_features, dtype=torch.float32)
    status = _library().sp_bsr_rows(
        _ptr(x), tokens, x.stride(0), _ptr(vals), _ptr(row_ptr), _ptr(cols),
        row_ptr.numel() - 1, r, c, _ptr(bias), _ptr(y), out_features, _threads(),
    )  # fmt: skip
    if status != 0:
        raise ValueError(f"block: bsr_rows takes block heights {BSR_ROWS}, got {r}")
    return y


def padded(length: int) -> int:
    """``length`` rounded up to whole cache lines of floats (the row stride of padded xT)."""
    return -(-length // ALIGN) * ALIGN


def group_cols(
    xT: Tensor,
    vals: Tensor,
    col_ptr: Tensor,
    cols: Tensor,
    group: int,
    bias: Tensor | None,
    out_features: int,
) -> Tensor:
    """yT (B, out, L) = W (out, K) @ xT (B, K, L) + bias[:, None].

    Args:
        xT: (B, K, L) float32 with contiguous rows (each of L positions); rows padded to
            ``padded(L)`` floats run faster.
        vals: (n_cols * group,) the groups' values, each group laid out (n_cols, group).
        col_ptr: (out / group + 1,) int64 offsets of each group's columns.
        cols: (n_cols,) int32 column indices.
        group: rows per group (1: CSR).
        bias: (out,) or None.
    """
    nb, _, length = xT.shape
    if xT.stride(2) != 1:
        raise ValueError("xT: rows must be contiguous")
    y = torch.empty(nb, out_features, length, dtype=torch.float32)
    _library().sp_group_cols(
        _ptr(xT), nb, xT.stride(0), xT.stride(1), length, _ptr(vals), _ptr(col_ptr), _ptr(cols),
        col_ptr.numel() - 1, group, _ptr(bias), _ptr(y), y.stride(0), y.stride(1), _threads(),
    )  # fmt: skip
    return y


def group_tokens(
    x: Tensor,
    vals: Tensor,
    col_ptr: Tensor,
    cols: Tensor,
    group: int,
    bias: Tensor | None,
    out_features: int,
) -> Tensor:
    """y (T, out) = x (T, in) @ W^T + bias with W as for :func:`group_cols`.

    Each thread transposes the tokens it computes into the column layout and back, so the
    tokens stay in its core's cache between the three steps.

    Args:
        x: (T, in) float32, rows contiguous (row stride may exceed ``in``).
    """
    tokens, width = x.shape
    ldt = padded(tokens)
    xT = torch.empty(width, ldt, dtype=torch.float32)
    yT = torch.empty(out_features, ldt, dtype=torch.float32)
    y = torch.empty(tokens, out_features, dtype=torch.float32)
    _library().sp_group_tokens(
        _ptr(x), tokens, x.stride(0), width, _ptr(vals), _ptr(col_ptr), _ptr(cols),
        col_ptr.numel() - 1, group, _ptr(bias), _ptr(y), out_features, out_features, _ptr(xT),
        _ptr(yT), ldt, _threads(),
    )  # fmt: skip
    return y


def im2col(
    x: Tensor,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> Tensor:
    """F.unfold's (B, C * kh * kw, Ho * Wo) with zero padding, rows padded to whole lines.

    Args:
        x: (B, C, H, W) float32, contiguous.

    Returns:
        a (B, C * kh * kw, Ho * Wo) view of a buffer whose rows are ``padded(Ho * Wo)`` long.
    """
    nb, channels, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    length = ho * wo
    buffer = torch.empty(nb, channels * kh * kw, padded(length), dtype=torch.float32)
    _library().sp_im2col(
        _ptr(x), nb, channels, h, w, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo,
        _ptr(buffer), buffer.shape[2], _threads(),
    )  # fmt: skip
    return buffer[:, :, :length]

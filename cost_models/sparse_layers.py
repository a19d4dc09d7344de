"""Inference-only Linear / Conv2d layers that run our own sparse kernels or CUDA's.

Each class is built from a finalized dense module (zeros in the weight) and computes the same
function. ``kernel`` names what it runs, as the deployment report does:

- ``native_bsr`` (CPU, Linear, r x c blocks with r a multiple of 8): each kept block a small
  dense GEMM over all tokens, in row layout (:func:`cost_models.native.bsr_rows`);
- ``native_csr`` (CPU, Linear and Conv2d, any zeros): rows grouped by shared column lists (one
  row per group for unstructured, the block rows for blocks), vectorised over tokens or
  output positions; a convolution is im2col (1x1 convolutions read the input as is) then one
  sparse product per sample, whose output already is NCHW (:func:`cost_models.native.group_cols`);
- ``cuda_bsr`` (CUDA, Linear, blocks): torch's BSR matmul (Triton kernels where present);
- ``semi_structured`` (CUDA, Linear, 2:4): ``torch.sparse.to_sparse_semi_structured``
  (cuSPARSELt / CUTLASS sparse tensor cores).

torch's own CSR/BSR modules (MKL on CPU) are in :mod:`cost_models.kernels` (``torch_sparse``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cost_models import native
from cost_models.kernels import conv_matrix
from cost_models.layouts import Layout, block_mask


def pack_block_rows(matrix: Tensor, block: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """The kept r x c blocks of an (out, in) matrix for ``native.bsr_rows``.

    Returns:
        vals (n_blocks, c, r) each block transposed, row_ptr (out / r + 1,) int64, cols
        (n_blocks,) int32 block-column indices.
    """
    r, c = block
    rows, cols = matrix.shape
    blocks = matrix.reshape(rows // r, r, cols // c, c).permute(0, 2, 3, 1)  # (R, C, c, r)
    kept = block_mask(matrix, block)  # (R, C)
    row_ptr = torch.zeros(rows // r + 1, dtype=torch.int64)
    row_ptr[1:] = kept.sum(dim=1).cumsum(0)
    index = kept.nonzero()  # row-major: block rows in order
    vals = blocks[index[:, 0], index[:, 1]].contiguous().float()
    return vals, row_ptr, index[:, 1].to(torch.int32).contiguous()


def pack_row_groups(matrix: Tensor, group: int) -> tuple[Tensor, Tensor, Tensor]:
    """An (out, in) matrix as groups of ``group`` rows sharing a column list (``group_cols``).

    A group keeps every column in which any of its rows is nonzero.

    Returns:
        vals (n_cols * group,) laid out (n_cols, group) per group, col_ptr (out / group + 1,)
        int64, cols (n_cols,) int32.
    """
    rows, width = matrix.shape
    grouped = matrix.reshape(rows // group, group, width)  # (G_n, group, in)
    used = (grouped != 0).any(dim=1)  # (G_n, in)
    col_ptr = torch.zeros(rows // group + 1, dtype=torch.int64)
    col_ptr[1:] = used.sum(dim=1).cumsum(0)
    index = used.nonzero()
    vals = grouped[index[:, 0], :, index[:, 1]].contiguous().float().reshape(-1)
    return vals, col_ptr, index[:, 1].to(torch.int32).contiguous()


def _bias(module: nn.Module) -> Tensor | None:
    bias = getattr(module, "bias", None)
    return None if bias is None else bias.detach().float().contiguous().clone()


class NativeBsrLinear(nn.Module):
    """Linear whose r x c block-sparse weight runs ``native.bsr_rows`` (r in 8, 16, 24, 32)."""

    kernel = "native_bsr"

    def __init__(self, module: nn.Linear, layout: Layout) -> None:
        super().__init__()
        if layout.kind != "blocks" or layout.block[0] not in native.BSR_ROWS:
            raise ValueError(f"layout: native_bsr needs blocks of {native.BSR_ROWS} rows")
        self.in_features, self.out_features = module.in_features, module.out_features
        self.block = layout.block
        vals, row_ptr, cols = pack_block_rows(module.weight.detach().cpu(), layout.block)
        self.register_buffer("vals", vals)
        self.register_buffer("row_ptr", row_ptr)
        self.register_buffer("cols", cols)
        self.register_buffer("bias", _bias(module))

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.in_features)
        if flat.stride(1) != 1 or flat.dtype != torch.float32:
            flat = flat.float().contiguous()
        y = native.bsr_rows(
            flat, self.vals, self.row_ptr, self.cols, self.block, self.bias, self.out_features
        )
        return y.reshape(*lead, self.out_features)


class NativeCsrLinear(nn.Module):
    """Linear whose sparse weight runs ``native.group_tokens`` (``group_cols``'s row form)."""

    kernel = "native_csr"

    def __init__(self, module: nn.Linear, layout: Layout) -> None:
        super().__init__()
        self.in_features, self.out_features = module.in_features, module.out_features
        self.group = layout.block[0]
        vals, col_ptr, cols = pack_row_groups(module.weight.detach().cpu(), self.group)
        self.register_buffer("vals", vals)
        self.register_buffer("col_ptr", col_ptr)
        self.register_buffer("cols", cols)
        self.register_buffer("bias", _bias(module))

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.in_features)
        if flat.stride(1) != 1 or flat.dtype != torch.float32:
            flat = flat.float().contiguous()
        y = native.group_tokens(
            flat, self.vals, self.col_ptr, self.cols, self.group, self.bias, self.out_features
        )
        return y.reshape(*lead, self.out_features)


class NativeCsrConv2d(nn.Module):
    """Conv2d as im2col and ``native.group_cols`` per sample (output already NCHW)."""

    kernel = "native_csr"

    def __init__(self, module: nn.Conv2d, layout: Layout) -> None:
        super().__init__()
        self.out_channels = module.out_channels
        self.kernel_size = tuple(module.kernel_size)
        self.stride = tuple(module.stride)
        self.dilation = tuple(module.dilation)
        self.pad = tuple(module._reversed_padding_repeated_twice)  # (left, right, top, bottom)
        self.pad_mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        self.pointwise = self.kernel_size == (1, 1) and self.stride == (1, 1) and not any(self.pad)
        self.group = layout.block[0]
        matrix = conv_matrix(module.weight.detach().cpu(), module.groups)  # (out, in*kh*kw)
        vals, col_ptr, cols = pack_row_groups(matrix, self.group)
        self.register_buffer("vals", vals)
        self.register_buffer("col_ptr", col_ptr)
        self.register_buffer("cols", cols)
        self.register_buffer("bias", _bias(module))

    def forward(self, x: Tensor) -> Tensor:
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        x = x.float()
        left, right, top, bottom = self.pad
        zero_pad = self.pad_mode == "constant" and left == right and top == bottom
        if any(self.pad) and not zero_pad:
            x = F.pad(x, self.pad, mode=self.pad_mode)
        x = x.contiguous()
        n, channels, h, w = x.shape
        if self.pointwise:
            cols = x.reshape(n, channels, h * w)  # (N, C, L): already im2col
            h_out, w_out = h, w
        else:
            if not zero_pad:
                left = top = 0  # padded above
            cols = native.im2col(x, self.kernel_size, self.stride, (top, left), self.dilation)
            kh, kw = self.kernel_size
            h_out = (h + 2 * top - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
            w_out = (w + 2 * left - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        y = native.group_cols(
            cols, self.vals, self.col_ptr, self.cols, self.group, self.bias, self.out_channels
        )  # (N, out, L)
        y = y.reshape(n, self.out_channels, h_out, w_out)
        return y[0] if unbatched else y


class CudaBsrLinear(nn.Module):
    """Linear with a BSR weight on CUDA: torch's block-sparse matmul (Triton where present)."""

    kernel = "cuda_bsr"

    def __init__(self, module: nn.Linear, layout: Layout) -> None:
        super().__init__()
        if layout.kind != "blocks":
            raise ValueError("layout: cuda_bsr needs a block layout")
        self.in_features, self.out_features = module.in_features, module.out_features
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse BSR tensor support is in beta")
            self.weight = module.weight.detach().to_sparse_bsr(layout.block)
        self.bias = None if module.bias is None else module.bias.detach().clone()

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.in_features)
        tokens = flat.shape[0]
        triton_mm = _triton_bsr_dense_mm()
        if triton_mm is not None:
            xT = flat.new_zeros(self.in_features, -(-tokens // 16) * 16)  # Triton: N % 16 == 0
            xT[:, :tokens] = flat.t()
            y = triton_mm(self.weight, xT)[:, :tokens].t()
        else:
            y = (self.weight @ flat.t()).t()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)


def _triton_bsr_dense_mm() -> Callable[..., Tensor] | None:
    """torch's Triton BSR x dense kernel where Triton is installed, else None."""
    try:
        from torch.sparse._triton_ops import bsr_dense_mm
    except ImportError:
        return None
    return bsr_dense_mm


class SemiStructuredLinear(nn.Module):
    """Linear with a 2:4 weight on CUDA sparse tensor cores (``to_sparse_semi_structured``)."""

    kernel = "semi_structured"

    def __init__(self, module: nn.Linear, layout: Layout) -> None:
        super().__init__()
        if layout.nm != (2, 4) and not (layout.kind == "nm" and layout.nm[0] < 2):
            raise ValueError("layout: semi_structured needs at most 2 of every 4 weights kept")
        from torch.sparse import to_sparse_semi_structured

        self.in_features, self.out_features = module.in_features, module.out_features
        self.weight = nn.Parameter(
            to_sparse_semi_structured(module.weight.detach()), requires_grad=False
        )
        self.bias = None if module.bias is None else module.bias.detach().clone()

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.in_features)
        y = F.linear(flat, self.weight, self.bias)
        return y.reshape(*lead, self.out_features)

"""torch's own sparse kernels (CSR / BSR, MKL on CPU) as modules, and how kernels are timed.

These are one candidate of ``cost_models.deploy`` (``torch_sparse``); our own kernels are in
``cost_models.sparse_layers`` and usually win (benchmarks/inference.py).

A masked Linear or Conv2d becomes a module holding its weight as a compressed sparse matrix,
CSR for unstructured sparsity and BSR (r x c blocks) for block sparsity, multiplied with
``torch.sparse.mm``-style ``matrix @ dense`` (MKL / native kernels on CPU, cuSPARSE on CUDA),
whose time grows linearly with the number of kept entries:

- blocks: BSR with g x g blocks, g = gcd(r, c) (MKL takes square blocks only), CSR when g = 1.
- Linear: ``y = (W @ x.T).T + b`` over all tokens at once, W (out, in) sparse.
- Conv2d: im2col then one sparse matmul: ``cols = unfold(pad(x))`` (N, in*kh*kw, L),
  ``y = W @ cols`` with W (out, in*kh*kw) sparse; grouped convolutions use the block-diagonal
  (out, in*kh*kw*groups) matrix, which has no more stored entries.
- ``nn.MultiheadAttention`` keeps its dense kernels (its in- and out-projection weights are read
  directly by ``F.multi_head_attention_forward``, so they are not swapped).

These kernels are measured, not assumed: on CPU, CSR/BSR time is close to a + b * kept, and
beats the dense kernel only at low density (see benchmarks/inference.py).
"""

from __future__ import annotations

import contextlib
import copy
import math
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from spartan_core.blocks import BlockShape
from spartan_core.layers import MaskTarget, get_submodule


def kernel_block(block_shape: BlockShape) -> tuple[int, int]:
    """The BSR block the kernels use for r x c sparsity: g x g with g = gcd(r, c).

    MKL's BSR kernels take square blocks only; an r x c block is (r/g) * (c/g) g x g blocks, so
    the time stays linear in the kept r x c blocks. g = 1 means CSR.
    """
    g = math.gcd(int(block_shape[0]), int(block_shape[1]))
    return g, g


def to_sparse_matrix(matrix: torch.Tensor, block_shape: BlockShape) -> torch.Tensor:
    """A dense (out, in) matrix as CSR (g = 1) or BSR with ``kernel_block(block_shape)``."""
    block = kernel_block(block_shape)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        if block == (1, 1):
            return matrix.to_sparse_csr()
        return matrix.to_sparse_bsr(block)


def conv_matrix(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """A conv weight (out, in/groups, kh, kw) as the (out, in*kh*kw) im2col matrix."""
    out = weight.shape[0]
    per_group = weight[0].numel()  # in/groups * kh * kw
    if groups == 1:
        return weight.reshape(out, per_group)
    rows = out // groups
    full = weight.new_zeros(groups, rows, groups, per_group)
    idx = torch.arange(groups, device=weight.device)
    full[idx, :, idx, :] = weight.reshape(groups, rows, per_group)
    return full.reshape(out, groups * per_group)


class SparseLinear(nn.Module):
    """Inference-only Linear with a CSR/BSR weight: ``y = (W @ x.T).T + b``."""

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None, block_shape: BlockShape = (1, 1)
    ) -> None:
        super().__init__()
        self.in_features = weight.shape[1]
        self.out_features = weight.shape[0]
        self.weight = to_sparse_matrix(weight.detach(), block_shape)  # (out, in) sparse
        self.bias = None if bias is None else bias.detach().clone()

    @classmethod
    def from_dense(cls, module: nn.Linear, block_shape: BlockShape = (1, 1)) -> SparseLinear:
        return cls(module.weight, module.bias, block_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.in_features)  # (N, in)
        y = (self.weight @ flat.t()).t()  # (N, out)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)


class SparseConv2d(nn.Module):
    """Inference-only Conv2d as im2col plus one CSR/BSR matmul."""

    def __init__(self, module: nn.Conv2d, block_shape: BlockShape = (1, 1)) -> None:
        super().__init__()
        weight = module.weight.detach()
        self.out_channels = weight.shape[0]
        self.kernel_size = tuple(module.kernel_size)
        self.stride = tuple(module.stride)
        self.dilation = tuple(module.dilation)
        self.pad = tuple(module._reversed_padding_repeated_twice)  # (left, right, top, bottom)
        self.pad_mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        self.weight = to_sparse_matrix(conv_matrix(weight, module.groups), block_shape)
        self.bias = None if module.bias is None else module.bias.detach().clone()

    @classmethod
    def from_dense(cls, module: nn.Conv2d, block_shape: BlockShape = (1, 1)) -> SparseConv2d:
        return cls(module, block_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        if any(self.pad):
            x = F.pad(x, self.pad, mode=self.pad_mode)
        n, _, h, w = x.shape
        kh, kw = self.kernel_size
        h_out = (h - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        w_out = (w - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        cols = F.unfold(x, self.kernel_size, dilation=self.dilation, stride=self.stride)
        # cols (N, in*kh*kw, L) -> (in*kh*kw, N*L)
        cols = cols.transpose(0, 1).reshape(cols.shape[1], -1)
        y = self.weight @ cols  # (out, N*L)
        if self.bias is not None:
            y = y + self.bias[:, None]
        y = y.reshape(self.out_channels, n, h_out, w_out).transpose(0, 1)
        return y[0] if unbatched else y


def sparse_module(module: nn.Module, block_shape: BlockShape = (1, 1)) -> nn.Module:
    """The sparse-kernel version of a Linear or Conv2d (other modules are returned as is)."""
    if isinstance(module, nn.Linear):
        return SparseLinear.from_dense(module, block_shape)
    if isinstance(module, nn.Conv2d):
        return SparseConv2d.from_dense(module, block_shape)
    return module


def sparse_model(
    model: nn.Module, targets: Sequence[MaskTarget], block_shape: BlockShape = (1, 1)
) -> nn.Module:
    """A copy of ``model`` whose target Linear/Conv2d layers run sparse kernels.

    The copy takes each layer's effective weight (``module.weight``, which for a masked model is
    the masked weight), so masking parametrizations do not survive into it. The projections
    inside ``nn.MultiheadAttention`` stay dense. Run it under ``no_attention_fastpath()``.
    """
    copied = copy.deepcopy(model)
    attention = {n for n, m in copied.named_modules() if isinstance(m, nn.MultiheadAttention)}
    for t in targets:
        parent_name = t.module_name.rpartition(".")[0]
        if t.kind == "mha_in_proj" or (t.module_name and parent_name in attention):
            # F.multi_head_attention_forward reads the projection weights as dense tensors
            continue
        module = get_submodule(copied, t.module_name)
        with torch.no_grad():
            replacement = sparse_module(module, block_shape)
        if not t.module_name:
            return replacement
        parent_name, _, child = t.module_name.rpartition(".")
        setattr(get_submodule(copied, parent_name), child, replacement)
    return copied


@contextlib.contextmanager
def no_attention_fastpath() -> Iterator[None]:
    """Turn off PyTorch's fused transformer fast path, which reads Linear weights as dense.

    A sparse model whose ``nn.TransformerEncoderLayer`` holds sparse Linears must run inside
    this context in eval mode.
    """
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


def median_ms(
    fn: Callable[[], object],
    *,
    repeats: int,
    warmup: int = 1,
    device: torch.device | None = None,
    before: Callable[[], object] | None = None,
) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs, in ms.

    On CUDA the device is synchronised around each run so the time covers the kernels.
    ``before``, when given, runs untimed before each timed run (to clear caches, say).
    """
    if repeats < 1:
        raise ValueError(f"repeats: expected a positive integer, got {repeats!r}")
    cuda = device is not None and device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def timed_ms(
    fn: Callable[[], object],
    *,
    device: torch.device | None = None,
    budget_ms: float = 150.0,
    repeats: tuple[int, int] = (5, 50),
) -> float:
    """Median ms of ``fn`` with as many repeats as fit in ``budget_ms``, within ``repeats``.

    One run after a warm-up sizes the repeats, so quick functions get many (less noise) and
    slow ones few.
    """
    once = median_ms(fn, repeats=1, warmup=1, device=device)
    low, high = repeats
    count = int(min(high, max(low, budget_ms / max(once, 1e-3))))
    return median_ms(fn, repeats=count, warmup=1, device=device)

"""Which sparsity structure a finalized weight has: read off its zeros, not told.

A finalized model is plain modules with zeros in the weights, so deployment and the compressed
file format find each layer's structure from the weight itself: r x c blocks when (almost)
every kept block is full, N:M when every group of m consecutive inputs holds at most n
nonzeros, unstructured otherwise. Weights are viewed as (out, in) with conv kernels flattened
into ``in`` (in/groups * kh * kw), as everywhere in the project.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

# block heights and widths tried, largest first: the largest that fits the zeros is taken
BLOCK_SIDES: tuple[int, ...] = (32, 16, 8, 4, 2)
NM_CANDIDATES: tuple[tuple[int, int], ...] = ((2, 4), (1, 4), (4, 8), (2, 8), (1, 2))
_BLOCK_FILL = 0.95  # a block layout needs its kept blocks this full, on average
_NM_FILL = 0.9  # an N:M layout needs this share of its n slots used, on average


@dataclass(frozen=True)
class Layout:
    """The sparsity structure of one (out, in) weight matrix.

    Attributes:
        kind: ``dense`` (no zeros), ``blocks``, ``nm`` or ``unstructured`` (zeros without a
            structure).
        block: (r, c) for ``blocks``, else (1, 1).
        nm: (n, m) for ``nm``, else None.
        density: nonzero fraction of the weights.
        kept_blocks: kept r x c blocks (``blocks``), else nonzero weights.
    """

    kind: str
    block: tuple[int, int]
    nm: tuple[int, int] | None
    density: float
    kept_blocks: int

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "block": list(self.block),
            "nm": list(self.nm) if self.nm else None,
            "density": self.density,
        }


def weight_matrix(module: nn.Module) -> Tensor:
    """The (out, in) view of a Linear or Conv2d weight (conv kernels flattened)."""
    if not isinstance(module, nn.Linear | nn.Conv2d):
        raise ValueError(f"module: expected a Linear or Conv2d, got {type(module).__name__}")
    weight = module.weight.detach()
    return weight.reshape(weight.shape[0], -1)


def block_mask(matrix: Tensor, block: tuple[int, int]) -> Tensor:
    """(R, C) bool: which r x c blocks hold a nonzero (the block shape must tile the matrix)."""
    r, c = block
    rows, cols = matrix.shape
    return (matrix.reshape(rows // r, r, cols // c, c) != 0).any(dim=3).any(dim=1)


def detect_layout(matrix: Tensor) -> Layout:
    """The structure of a weight matrix's zeros (see the module docstring)."""
    rows, cols = matrix.shape
    nonzero = int(torch.count_nonzero(matrix))
    density = nonzero / max(matrix.numel(), 1)
    if nonzero == matrix.numel():
        return Layout("dense", (1, 1), None, 1.0, nonzero)
    if nonzero:
        r = _block_side(matrix, nonzero, rows, lambda s: (s, 1))
        c = _block_side(matrix, nonzero, cols, lambda s: (1, s))
        if (r, c) != (1, 1):
            kept = int(block_mask(matrix, (r, c)).sum())
            if nonzero >= _BLOCK_FILL * kept * r * c:
                return Layout("blocks", (r, c), None, density, kept)
    for n, m in NM_CANDIDATES:
        if cols % m or nonzero == 0:
            continue
        per_group = (matrix.reshape(rows, cols // m, m) != 0).sum(dim=2)
        if int(per_group.max()) <= n and nonzero >= _NM_FILL * per_group.numel() * n:
            return Layout("nm", (1, 1), (n, m), density, nonzero)
    return Layout("unstructured", (1, 1), None, density, nonzero)


def _block_side(
    matrix: Tensor, nonzero: int, length: int, shape: Callable[[int], tuple[int, int]]
) -> int:
    """The largest side s (of ``BLOCK_SIDES``, else 1) whose blocks ``shape(s)`` are full."""
    for side in BLOCK_SIDES:
        if length % side:
            continue
        block = shape(side)
        if nonzero >= _BLOCK_FILL * int(block_mask(matrix, block).sum()) * side:
            return side
    return 1

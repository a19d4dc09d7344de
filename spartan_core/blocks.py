"""Block structure: a weight viewed as (out, in) and tiled into r x c blocks.

Unstructured sparsity is the 1 x 1 block. Block entries are ordered row-major over the
(out / r, in / c) grid of blocks; ``block_values`` and ``expand_block_mask`` are inverses in
layout.
"""

from __future__ import annotations

import torch

from spartan_core.layers import MaskTarget

BlockShape = tuple[int, int]


def validate_block_shape(block_shape: BlockShape) -> BlockShape:
    """Check that a block shape is two positive integers."""
    if len(block_shape) != 2 or any(int(b) != b or b < 1 for b in block_shape):
        raise ValueError(f"block_shape: expected two positive integers, got {block_shape!r}")
    return int(block_shape[0]), int(block_shape[1])


def block_grid(target: MaskTarget, block_shape: BlockShape) -> tuple[int, int]:
    """Number of block rows and columns of a target's (out, in) matrix.

    Raises:
        ValueError: if the block shape does not tile the matrix, naming the layer.
    """
    r, c = validate_block_shape(block_shape)
    rows, cols = target.matrix_shape
    if rows % r or cols % c:
        raise ValueError(
            f"block_shape: {r}x{c} blocks do not tile layer {target.module_name!r} "
            f"({target.kind}, weight {tuple(target.shape)} viewed as {rows}x{cols})"
        )
    return rows // r, cols // c


def num_entries(target: MaskTarget, block_shape: BlockShape) -> int:
    """Maskable entries (blocks) of a target."""
    rows, cols = block_grid(target, block_shape)
    return rows * cols


def block_values(weight: torch.Tensor, block_shape: BlockShape) -> torch.Tensor:
    """Sum of |w| over each block, flattened row-major: (n_blocks,)."""
    r, c = block_shape
    matrix = weight.reshape(weight.shape[0], -1)  # (out, in)
    if r == 1 and c == 1:
        return matrix.abs().reshape(-1)
    rows, cols = matrix.shape
    blocks = matrix.reshape(rows // r, r, cols // c, c)  # (R, r, C, c)
    return blocks.abs().sum(dim=(1, 3)).reshape(-1)


def expand_block_mask(
    mask: torch.Tensor, weight_shape: torch.Size | tuple[int, ...], block_shape: BlockShape
) -> torch.Tensor:
    """Broadcast a per-block mask (n_blocks,) back to the weight's shape."""
    r, c = block_shape
    if r == 1 and c == 1:
        return mask.reshape(weight_shape)
    rows = weight_shape[0]
    cols = mask.numel() * r * c // rows
    grid = mask.reshape(rows // r, 1, cols // c, 1)
    return grid.expand(rows // r, r, cols // c, c).reshape(weight_shape)

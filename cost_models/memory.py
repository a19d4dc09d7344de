"""The ``memory`` cost model: bytes of storage per kept entry in a sparse format.

For a layer whose weight is viewed as an (R, C) matrix, tiled into r x c blocks (b = r * c
weights per block), with ``v = dtype_bytes`` and ``i = index_bytes``:

==========  ========================  ==============================
format      per kept block (bytes)    fixed per layer (bytes)
==========  ========================  ==============================
``csr``     b * (v + i)               (R + 1) * i      (row pointers)
``bsr``     b * v + i                 (R / r + 1) * i  (block-row pointers)
``coo``     b * (v + 2 i)             0
``bitmask`` b * v                     ceil(R * C / 8)  (one bit per weight)
==========  ========================  ==============================

``auto`` (the default) is ``csr`` for unstructured sparsity and ``bsr`` for blocks; the two
agree for 1 x 1 blocks. Dense storage is not offered: its size does not depend on the mask.
Biases and unmasked layers are not counted.

N:M layers (``nm=(n, m)``) under ``auto`` use the N:M format of sparse tensor cores: each kept
weight stores its value plus ceil(log2 m) bits of index metadata (its position in the group: 2
bits for 2:4), ``v + ceil(log2 m) / 8`` bytes per kept weight and no fixed cost. A format named
explicitly prices N:M layers as single weights in that format.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from cost_models.base import CostModelBase
from cost_models.registry import register
from spartan_core.blocks import BlockShape, block_grid
from spartan_core.costs import LayerCost
from spartan_core.layers import MaskTarget
from spartan_core.nm import NMShape, validate_nm

FORMATS = ("auto", "csr", "bsr", "coo", "bitmask")


@register("memory")
class MemoryCost(CostModelBase):
    """Bytes per kept weight or block in a sparse storage format (values plus indices).

    Args:
        format: storage format: auto (csr when unstructured, bsr for blocks), csr, bsr, coo
            or bitmask.
        dtype_bytes: bytes per stored value (4 for float32, 2 for float16, 1 for int8).
        index_bytes: bytes per stored index (4 for int32, 8 for int64).
    """

    name = "memory"
    unit = "bytes"

    def __init__(self, format: str = "auto", dtype_bytes: float = 4, index_bytes: int = 4) -> None:
        if format not in FORMATS:
            raise ValueError(f"format: expected one of {list(FORMATS)}, got {format!r}")
        if isinstance(dtype_bytes, bool) or not (
            isinstance(dtype_bytes, int | float) and math.isfinite(dtype_bytes) and dtype_bytes > 0
        ):
            raise ValueError(f"dtype_bytes: expected a positive number, got {dtype_bytes!r}")
        if isinstance(index_bytes, bool) or not (isinstance(index_bytes, int) and index_bytes > 0):
            raise ValueError(f"index_bytes: expected a positive integer, got {index_bytes!r}")
        self.format = format
        self.dtype_bytes = float(dtype_bytes)
        self.index_bytes = int(index_bytes)

    def params(self) -> dict[str, object]:
        return {
            "format": self.format,
            "dtype_bytes": self.dtype_bytes,
            "index_bytes": self.index_bytes,
        }

    def resolved_format(self, block_shape: BlockShape, nm: NMShape | None = None) -> str:
        """The format actually used for a block shape or N:M (``auto`` resolved)."""
        if self.format != "auto":
            return self.format
        if nm is not None:
            return "nm"
        return "csr" if tuple(block_shape) == (1, 1) else "bsr"

    def nm_layer_cost(self, target: MaskTarget, nm: NMShape) -> LayerCost:
        """Bytes per kept weight of an N:M layer: the value and its index in the group."""
        if self.resolved_format((1, 1), nm) != "nm":
            return self.layer_cost(target, (1, 1))
        _, m = validate_nm(nm)
        return LayerCost(per_entry=self.dtype_bytes + math.ceil(math.log2(m)) / 8)

    def nm_layer_costs(
        self, model: nn.Module, targets: Sequence[MaskTarget], nm: NMShape
    ) -> dict[str, LayerCost]:
        """``layer_costs`` for N:M layers (see ``spartan_core.costs.price_targets``)."""
        return {t.name: self.nm_layer_cost(t, nm) for t in targets}

    def layer_cost(self, target: MaskTarget, block_shape: BlockShape) -> LayerCost:
        """Bytes per kept block and fixed bytes of one layer."""
        block_rows, _ = block_grid(target, block_shape)
        r, c = block_shape
        b = r * c
        v, i = self.dtype_bytes, self.index_bytes
        rows, cols = target.matrix_shape
        fmt = self.resolved_format(block_shape)
        if fmt == "csr":
            return LayerCost(per_entry=b * (v + i), fixed=(rows + 1) * i)
        if fmt == "bsr":
            return LayerCost(per_entry=b * v + i, fixed=(block_rows + 1) * i)
        if fmt == "coo":
            return LayerCost(per_entry=b * (v + 2 * i))
        return LayerCost(per_entry=b * v, fixed=math.ceil(rows * cols / 8))

    def layer_costs(
        self, model: nn.Module, targets: Sequence[MaskTarget], block_shape: BlockShape
    ) -> dict[str, LayerCost]:
        return {t.name: self.layer_cost(t, block_shape) for t in targets}

"""The ``flops`` cost model: multiply-accumulates (MACs) per kept weight for one input size.

Each weight of a masked layer is multiplied once per output position: ``H_out * W_out`` times
per sample for a Conv2d, once per token for a Linear (the product of the input's dimensions
other than batch and features), and once per query/key/value token for the packed attention
in-projection. These counts come from one shape-probing forward pass (``cost_models.probe``),
so any architecture works without per-model tables. A layer called several times per forward
(shared weights) counts every call. Biases, normalisation and activations are not priced.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from cost_models.base import CostModelBase, check_input_size
from cost_models.probe import probe, uses_per_weight
from cost_models.registry import register
from spartan_core.blocks import BlockShape, validate_block_shape
from spartan_core.costs import LayerCost
from spartan_core.layers import MaskTarget


@register("flops")
class FlopsCost(CostModelBase):
    """Multiply-accumulates per weight for the model's input size, found by one probe pass.

    Args:
        input_size: one input's shape without the batch, e.g. (3, 224, 224).
    """

    name = "flops"
    unit = "MACs"

    def __init__(self, input_size: tuple[int, ...] = (3, 224, 224)) -> None:
        self.input_size = check_input_size(input_size)

    def params(self) -> dict[str, object]:
        return {"input_size": list(self.input_size)}

    def macs_per_weight(self, model: nn.Module, targets: Sequence[MaskTarget]) -> dict[str, float]:
        """MACs per weight of each target, per sample.

        Raises:
            ValueError: if a target is never called by the forward pass (its cost would be 0).
        """
        calls = probe(model, targets, self.input_size)
        out = {}
        for t in targets:
            macs = uses_per_weight(calls[t.name])
            if macs <= 0:
                raise ValueError(
                    f"cost_model: flops: layer {t.module_name!r} is not used by the forward pass "
                    f"on input_size {list(self.input_size)}, so its weights cost nothing; "
                    f"exclude it"
                )
            out[t.name] = macs
        return out

    def layer_costs(
        self, model: nn.Module, targets: Sequence[MaskTarget], block_shape: BlockShape
    ) -> dict[str, LayerCost]:
        r, c = validate_block_shape(block_shape)
        macs = self.macs_per_weight(model, targets)
        return {t.name: LayerCost(per_entry=macs[t.name] * r * c) for t in targets}

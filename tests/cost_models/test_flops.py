"""flops: MACs per weight from one shape-probing forward pass."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import cost_models
from spartan_core.layers import find_targets, maskable_targets


def total_macs(model: nn.Module, input_size: tuple[int, ...]) -> float:
    cm = cost_models.get("flops", input_size=input_size)
    targets = maskable_targets(model)
    costs = cm.layer_costs(model, targets, (1, 1))
    return sum(costs[t.name].per_entry * t.numel for t in targets)


@pytest.mark.parametrize(("arch", "published"), [("resnet18", 1.81e9), ("resnet50", 4.09e9)])
def test_torchvision_resnets_match_published_macs(arch: str, published: float) -> None:
    model = getattr(torchvision.models, arch)(weights=None)
    macs = total_macs(model, (3, 224, 224))
    assert abs(macs / published - 1) < 0.02


def test_conv_and_linear_counts_are_exact(tiny_convnet: nn.Module) -> None:
    cm = cost_models.get("flops", input_size=(3, 8, 8))
    costs = cm.layer_costs(tiny_convnet, maskable_targets(tiny_convnet), (1, 1))
    assert costs["conv1.weight"].per_entry == 8 * 8  # H_out * W_out, padding 1
    assert costs["conv2.weight"].per_entry == 4 * 4  # stride 2
    assert costs["fc.weight"].per_entry == 1  # one token
    blocks = cm.layer_costs(tiny_convnet, maskable_targets(tiny_convnet), (2, 9))
    assert blocks["conv2.weight"].per_entry == 16 * 18


def test_linear_counts_tokens_and_shared_layers_count_each_call() -> None:
    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (B, 5, 4)
            return self.proj(self.proj(x))

    cm = cost_models.get("flops", input_size=(5, 4))
    model = Tokens()
    costs = cm.layer_costs(model, maskable_targets(model), (1, 1))
    assert costs["proj.weight"].per_entry == 2 * 5


def test_attention_in_projection_counts_tokens() -> None:
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True)
    cm = cost_models.get("flops", input_size=(7, 16))
    costs = cm.layer_costs(layer, maskable_targets(layer), (1, 1))
    assert costs["self_attn.in_proj_weight"].per_entry == 7
    assert costs["self_attn.out_proj.weight"].per_entry == 7
    assert costs["linear1.weight"].per_entry == 7


def test_unused_layer_is_an_error() -> None:
    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(4, 4)
            self.spare = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    model = Unused()
    cm = cost_models.get("flops", input_size=(4,))
    with pytest.raises(ValueError, match="'spare' is not used by the forward pass"):
        cm.layer_costs(model, maskable_targets(model), (1, 1))
    costs = cm.layer_costs(model, find_targets(model, include=["used"]), (1, 1))
    assert costs["used.weight"].per_entry == 1


def test_model_that_cannot_run_on_meta_is_probed_for_real() -> None:
    class CpuOnly(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x + torch.ones(4))  # a CPU tensor: fails on meta

    model = CpuOnly()
    costs = cost_models.get("flops", input_size=(3, 4)).layer_costs(
        model, maskable_targets(model), (1, 1)
    )
    assert costs["fc.weight"].per_entry == 3


def test_wrong_input_size_names_the_field(tiny_convnet: nn.Module) -> None:
    cm = cost_models.get("flops", input_size=(5, 8, 8))
    with pytest.raises(ValueError, match="input_size"):
        cm.layer_costs(tiny_convnet, maskable_targets(tiny_convnet), (1, 1))


@pytest.mark.parametrize("size", [(), (3, 0, 8), (3, 8.5, 8), "abc", (True, 8, 8)])
def test_bad_input_size(size: object) -> None:
    with pytest.raises(ValueError, match="input_size"):
        cost_models.get("flops", input_size=size)


def test_probe_leaves_the_model_unchanged(tiny_convnet: nn.Module) -> None:
    tiny_convnet.train()
    before = {k: v.clone() for k, v in tiny_convnet.state_dict().items()}
    cost_models.get("flops", input_size=(3, 8, 8)).layer_costs(
        tiny_convnet, maskable_targets(tiny_convnet), (1, 1)
    )
    assert tiny_convnet.training
    assert not tiny_convnet.conv1._forward_hooks
    for k, v in tiny_convnet.state_dict().items():
        torch.testing.assert_close(v, before[k])

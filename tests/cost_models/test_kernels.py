"""Sparse inference kernels compute what the dense layers compute."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cost_models.kernels import (
    SparseConv2d,
    SparseLinear,
    kernel_block,
    median_ms,
    no_attention_fastpath,
    sparse_model,
)
from spartan_core.layers import maskable_targets


def pruned(module: nn.Module, keep: float = 0.3) -> nn.Module:
    torch.manual_seed(1)
    with torch.no_grad():
        module.weight.mul_(torch.rand_like(module.weight) < keep)
    return module


@pytest.mark.parametrize("block", [(1, 1), (2, 2), (4, 2)])
def test_sparse_linear(block: tuple[int, int]) -> None:
    torch.manual_seed(0)
    layer = pruned(nn.Linear(16, 8))
    x = torch.randn(3, 5, 16)
    torch.testing.assert_close(SparseLinear.from_dense(layer, block)(x), layer(x))


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(4, 8, 3, padding=1),
        nn.Conv2d(4, 8, 3, stride=2, padding=2, dilation=2, groups=2, padding_mode="reflect"),
        nn.Conv2d(4, 4, 3, groups=4, padding="same", bias=False),
    ],
)
def test_sparse_conv(conv: nn.Conv2d) -> None:
    torch.manual_seed(0)
    conv = pruned(conv)
    x = torch.randn(2, 4, 9, 7)
    for block in [(1, 1), (2, 2)]:
        sparse = SparseConv2d.from_dense(conv, block)
        torch.testing.assert_close(sparse(x), conv(x))
        torch.testing.assert_close(sparse(x[0]), conv(x[0]))


def test_kernel_blocks_are_square() -> None:
    assert kernel_block((1, 1)) == (1, 1)
    assert kernel_block((16, 16)) == (16, 16)
    assert kernel_block((4, 2)) == (2, 2)
    assert kernel_block((1, 4)) == (1, 1)


def test_sparse_model_matches_the_dense_model(tiny_convnet: nn.Module) -> None:
    for module in tiny_convnet.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            pruned(module)
    x = torch.randn(2, 3, 8, 8)
    sparse = sparse_model(tiny_convnet, maskable_targets(tiny_convnet))
    assert isinstance(sparse.conv1, SparseConv2d) and isinstance(sparse.fc, SparseLinear)
    assert isinstance(tiny_convnet.conv1, nn.Conv2d)  # the original is untouched
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), tiny_convnet(x))


def test_median_ms_runs_before_untimed_before_each_timed_run() -> None:
    order: list[str] = []
    median_ms(
        lambda: order.append("run"), repeats=3, warmup=1, before=lambda: order.append("evict")
    )
    assert order == ["run", "evict", "run", "evict", "run", "evict", "run"]


def test_profiled_times_layers_with_their_weights_evicted(monkeypatch: pytest.MonkeyPatch) -> None:
    from cost_models import profiled

    evicted: list[int] = []
    real = profiled._cache_evictor

    def counting(device: torch.device, inputs: list[torch.Tensor]):
        evict = real(device, inputs)
        return lambda: (evicted.append(1), evict())

    monkeypatch.setattr(profiled, "_cache_evictor", counting)
    model = nn.Sequential(nn.Linear(8, 8))
    cm = profiled.ProfiledCost(input_size=(8,), densities=(0.5, 1.0), repeats=2, warmup=0)
    cm.layer_costs(model, maskable_targets(model), (1, 1))
    densities = len(cm.fits["0.weight"].kept_blocks)
    assert len(evicted) >= 2 * (1 + densities)  # 2 repeats: dense, >= 1 candidate a density


def test_median_ms() -> None:
    calls = []
    assert median_ms(lambda: calls.append(1), repeats=3, warmup=2) >= 0
    assert len(calls) == 5
    with pytest.raises(ValueError, match="repeats"):
        median_ms(lambda: None, repeats=0)


def test_sparse_transformer_layer_keeps_attention_dense() -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True).eval()
    for module in layer.modules():
        if isinstance(module, nn.Linear):
            pruned(module)
    sparse = sparse_model(layer, maskable_targets(layer)).eval()
    assert isinstance(sparse.linear1, SparseLinear)
    assert type(sparse.self_attn.out_proj) is type(layer.self_attn.out_proj)
    x = torch.randn(2, 5, 16)
    with torch.inference_mode(), no_attention_fastpath():
        torch.testing.assert_close(sparse(x), layer(x))
    assert torch.backends.mha.get_fastpath_enabled()

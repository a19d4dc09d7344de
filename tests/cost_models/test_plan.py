"""One-shot plans: the hard top-k of |w| per unit cost, and costlier layers ending sparser."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import cost_models
from spartan_core import Sparsifier, SparsifierConfig
from tests.cost_models.conftest import INPUT_SIZE, twin_linear

TEN_X = {"default": {"per_block": 1.0}, "layers": {"0": {"per_block": 10.0}}}


@pytest.mark.parametrize("block", [(1, 1), (4, 4)])
def test_ten_times_costlier_layer_ends_less_dense(block: tuple[int, int]) -> None:
    model = twin_linear()
    cm = cost_models.get("latency_table", table=TEN_X)
    allocation = cost_models.plan(model, cm, 0.3, structure=block)
    density = {row["name"]: row["density"] for row in allocation["layers"]}
    assert density["0.weight"] < 0.5 * density["2.weight"]
    assert allocation.totals.cost_fraction == pytest.approx(0.3, abs=10 * 16 / (11 * 1024))
    # under params (equal costs) the same weights get the same density
    params = cost_models.plan(model, "params", 0.3, structure=block)
    assert params.layers[0].density == params.layers[1].density


def test_ten_times_costlier_layer_ends_less_dense_after_training() -> None:
    torch.manual_seed(0)
    model = twin_linear(16)
    cm = cost_models.get("latency_table", table=TEN_X)
    config = SparsifierConfig(target=0.3, cost_model=cm, warmup_frac=0.3, finetune_frac=0.2)
    steps = 20
    sparsifier = Sparsifier(model, config, total_steps=steps)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(64, 16)
    y = torch.randn(64, 16)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        sparsifier.step()
    densities = sparsifier.layer_densities()
    assert densities["0.weight"] < 0.5 * densities["2.weight"]
    report = cost_models.cost_report(sparsifier.finalize(), cm, latency_repeats=0)
    assert report.totals.cost_fraction == pytest.approx(0.3, abs=11 / (11 * 256))


def test_global_keeps_the_largest_unit_values() -> None:
    model = nn.Sequential(nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.1, -0.8, 0.3, 0.05], [0.6, 0.0, -0.2, 0.7]]))
    allocation = cost_models.plan(model, "params", 0.5)
    expected = torch.tensor([False, True, True, False, True, False, False, True])  # 4 of 8
    assert torch.equal(allocation.masks["0.weight"], expected)
    allocation.apply(model)
    assert torch.count_nonzero(model[0].weight) == 4
    assert allocation.layers[0].zero_weights == 4


def test_uniform_and_erk(tiny_convnet: nn.Module) -> None:
    uniform = cost_models.plan(tiny_convnet, "params", 0.25, distribution="uniform")
    for row in uniform.layers:
        assert abs(row.kept_entries - 0.25 * row.entries) <= 1
    erk = cost_models.plan(tiny_convnet, "params", 0.25, distribution="erk")
    densities = {row.name: row.density for row in erk.layers}
    # ERK keeps small layers denser: fc (16 x 10) over conv2 (16 x 8 x 3 x 3)
    assert densities["fc.weight"] > densities["conv2.weight"]
    assert erk.totals.cost_fraction == pytest.approx(0.25, abs=3 / erk.totals.dense_cost)
    assert len(erk.thresholds) == 3 and len(uniform.thresholds) == 3


def test_plan_is_a_json_mapping(tiny_convnet: nn.Module) -> None:
    allocation = cost_models.plan(
        tiny_convnet, "flops", 0.5, input_size=INPUT_SIZE, exclude=["conv1"]
    )
    data = json.loads(json.dumps(dict(allocation)))
    assert set(data) == {
        "cost_model",
        "target",
        "distribution",
        "block_shape",
        "layers",
        "totals",
        "thresholds",
        "nm",
    }
    assert data["cost_model"]["params"]["input_size"] == list(INPUT_SIZE)
    assert data["totals"]["unit"] == "MACs"
    assert [row["masked"] for row in data["layers"]] == [False, True, True]
    assert data == allocation.to_dict()
    assert "masks" not in data and set(allocation.masks) == {"conv2.weight", "fc.weight"}


def test_input_size_reprices_a_given_cost_model(tiny_convnet: nn.Module) -> None:
    big = cost_models.get("flops")  # 224 x 224 by default
    allocation = cost_models.plan(tiny_convnet, big, 0.5, input_size=INPUT_SIZE)
    assert allocation.layers[0].cost_per_entry == 64  # 8 x 8 outputs
    assert big.input_size == (3, 224, 224)


@pytest.mark.parametrize("target", [0.0, 1.5, -0.1, True, "half"])
def test_bad_targets(tiny_convnet: nn.Module, target: object) -> None:
    with pytest.raises(ValueError, match="target"):
        cost_models.plan(tiny_convnet, "params", target)


def test_unreachable_target_names_the_dense_share(tiny_convnet: nn.Module) -> None:
    with pytest.raises(ValueError, match=r"target: cost fraction 0.3 cannot be reached.*0.4265"):
        cost_models.plan(tiny_convnet, "flops", 0.3, input_size=INPUT_SIZE, exclude=["conv1"])


def test_other_errors(tiny_convnet: nn.Module) -> None:
    with pytest.raises(ValueError, match="distribution"):
        cost_models.plan(tiny_convnet, "params", 0.5, distribution="fair")
    with pytest.raises(ValueError, match="block_shape"):
        cost_models.plan(tiny_convnet, "params", 0.5, structure=(3, 5))
    with pytest.raises(ValueError, match="no maskable layer"):
        cost_models.plan(tiny_convnet, "params", 0.5, include=["head*"])
    with pytest.raises(ValueError, match="unknown cost model 'fast'"):
        cost_models.plan(tiny_convnet, "fast", 0.5)
    table = {"default": {"per_block": 1.0}, "layers": {"head": {"per_block": 2.0}}}
    with pytest.raises(ValueError, match=r"layers\['head'\] matches no maskable layer"):
        cost_models.plan(tiny_convnet, {"name": "latency_table", "params": {"table": table}}, 0.5)

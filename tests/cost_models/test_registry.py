"""The registry: lookup, errors, descriptions, and every registered cost model on a tiny net."""

from __future__ import annotations

import json

import pytest
from torch import nn

import cost_models
from cost_models.registry import register
from spartan_core.costs import CostModel, LayerCost
from spartan_core.layers import maskable_targets
from tests.cost_models.conftest import INPUT_SIZE

# parameters for the registered models that need some (or are slow by default); any other
# registered model is built with its defaults, so new entries are tested for free
EXAMPLE_PARAMS: dict[str, dict] = {
    "flops": {"input_size": INPUT_SIZE},
    "latency_table": {"table": {"unit": "us", "default": {"per_block": 2.0}}},
    "profiled": {"input_size": INPUT_SIZE, "densities": (0.5, 1.0), "repeats": 1, "warmup": 0},
}


def test_builtins_are_registered() -> None:
    assert {"params", "flops", "memory", "latency_table", "profiled"} <= set(
        cost_models.available()
    )


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown cost model 'nope'") as info:
        cost_models.get("nope")
    for name in cost_models.available():
        assert name in str(info.value)


def test_unknown_parameter_is_named() -> None:
    with pytest.raises(ValueError, match=r"no parameter.*'bogus'.*accepted.*input_size"):
        cost_models.get("flops", bogus=1)


def test_missing_required_parameter() -> None:
    with pytest.raises(ValueError, match=r"requires.*table"):
        cost_models.get("latency_table")


def test_register_rejects_a_taken_name() -> None:
    class Other:
        name = "params"
        unit = "x"

    with pytest.raises(ValueError, match="already registered"):
        register()(Other)


def test_resolve_accepts_names_mappings_and_objects() -> None:
    assert cost_models.resolve(None).name == "params"
    assert cost_models.resolve("memory").name == "memory"
    cm = cost_models.resolve({"name": "flops", "params": {"input_size": [3, 4, 4]}})
    assert cm.input_size == (3, 4, 4)
    assert cost_models.resolve("flops", input_size=(3, 5, 5)).input_size == (3, 5, 5)
    same = cost_models.get("memory")
    assert cost_models.resolve(same) is same
    with pytest.raises(ValueError, match="cost_model"):
        cost_models.resolve({"params": {}})
    with pytest.raises(ValueError, match="cost_model"):
        cost_models.resolve(3.0)


def test_describe_is_json_and_complete() -> None:
    items = cost_models.describe()
    json.dumps(items)
    by_name = {item["name"]: item for item in items}
    assert set(by_name) == set(cost_models.available())
    flops = by_name["flops"]
    assert flops["unit"] == "MACs"
    assert flops["description"]
    (size,) = [p for p in flops["parameters"] if p["name"] == "input_size"]
    assert size["default"] == [3, 224, 224]
    assert not size["required"]
    assert "batch" in size["description"]
    (table,) = by_name["latency_table"]["parameters"]
    assert table["required"] and table["default"] is None
    assert by_name["profiled"]["predicts_latency"] is True
    assert by_name["params"]["predicts_latency"] is False
    assert by_name["params"]["parameters"] == []
    with pytest.raises(ValueError, match="unknown cost model"):
        cost_models.describe("nope")


@pytest.mark.parametrize("name", cost_models.available())
def test_every_cost_model_prices_a_tiny_net(name: str, tiny_convnet: nn.Module) -> None:
    cm = cost_models.get(name, **EXAMPLE_PARAMS.get(name, {}))
    assert isinstance(cm, CostModel)
    assert cm.name == name and cm.unit
    targets = maskable_targets(tiny_convnet)
    costs = cm.layer_costs(tiny_convnet, targets, (1, 1))
    assert set(costs) == {t.name for t in targets}
    for cost in costs.values():
        assert isinstance(cost, LayerCost)
        assert cost.per_entry > 0 and cost.fixed >= 0
    report = cost_models.cost_report(tiny_convnet, cm, INPUT_SIZE, latency_repeats=0)
    assert report.totals.dense_cost > 0
    json.dumps(report.to_dict())


def test_a_cost_model_that_skips_a_layer_is_caught(tiny_convnet: nn.Module) -> None:
    class Partial:
        name = "partial"
        unit = "x"

        def layer_costs(self, model, targets, block_shape):
            return {t.name: LayerCost(1.0) for t in targets if t.name != "fc.weight"}

    with pytest.raises(ValueError, match=r"'partial' gave no cost for layer 'fc.weight'"):
        cost_models.plan(tiny_convnet, Partial(), 0.5)
    with pytest.raises(ValueError, match="per_entry: costs must be positive"):
        LayerCost(0.0)

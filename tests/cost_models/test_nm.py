"""N:M in the cost models, one-shot plans and the cost report."""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch
from torch import nn

import cost_models
from cost_models.report import CostReport
from spartan_core import Sparsifier, SparsifierConfig, find_targets
from spartan_core.costs import price_targets
from tests.cost_models.conftest import INPUT_SIZE

MASKED = 16 * 8 * 9 + 10 * 16  # conv2 and fc; conv1 (K = 27) does not tile by 4
DENSE = 8 * 3 * 9


def _groups_kept(mask: torch.Tensor, m: int) -> torch.Tensor:
    rows = mask.shape[0]
    return (mask.reshape(rows, -1).reshape(rows, -1, m) != 0).sum(-1)


@pytest.mark.parametrize(("nm", "per_weight"), [((2, 4), 4.25), ((1, 2), 4.125), ((3, 6), 4.375)])
def test_memory_prices_value_and_index_bits(
    tiny_convnet: nn.Module, nm: tuple[int, int], per_weight: float
) -> None:
    targets = find_targets(tiny_convnet, exclude=["conv1"])
    costs = price_targets(cost_models.get("memory"), tiny_convnet, targets, (1, 1), nm)
    assert {c.per_entry for c in costs.values()} == {per_weight}
    assert {c.fixed for c in costs.values()} == {0.0}
    csr = price_targets(cost_models.get("memory", format="csr"), tiny_convnet, targets, (1, 1), nm)
    assert {c.per_entry for c in csr.values()} == {8.0}  # a named format: per weight in it
    assert cost_models.get("memory").resolved_format((1, 1), nm) == "nm"


@pytest.mark.parametrize("name", ["params", "flops"])
def test_other_cost_models_price_nm_per_weight(tiny_convnet: nn.Module, name: str) -> None:
    cm = cost_models.get(name, **({"input_size": INPUT_SIZE} if name == "flops" else {}))
    targets = find_targets(tiny_convnet, exclude=["conv1"])
    nm_costs = price_targets(cm, tiny_convnet, targets, (1, 1), (2, 4))
    assert nm_costs == cm.layer_costs(tiny_convnet, targets, (1, 1))


def test_plan_keeps_n_of_every_group(tiny_convnet: nn.Module) -> None:
    allocation = cost_models.plan(tiny_convnet, "params", nm=(2, 4), exclude=["conv1"])
    assert allocation.target == pytest.approx((0.5 * MASKED + DENSE) / (MASKED + DENSE))
    assert allocation.totals.cost_fraction == pytest.approx(allocation.target)
    rows = {row.name: row for row in allocation.layers}
    assert rows["conv1.weight"].nm is None and not rows["conv1.weight"].masked
    for name in ("conv2.weight", "fc.weight"):
        assert rows[name].nm == [2, 4] and rows[name].density == 0.5
    for name, mask in allocation.weight_masks(tiny_convnet).items():
        kept = _groups_kept(mask, 4)
        assert torch.equal(kept, torch.full_like(kept, 2)), name
    allocation.apply(tiny_convnet)
    kept = _groups_kept(tiny_convnet.fc.weight.detach(), 4)
    assert torch.equal(kept, torch.full_like(kept, 2))
    data = json.loads(json.dumps(dict(allocation)))
    assert data["nm"] == [2, 4] and data["thresholds"] == {} and data["block_shape"] == [1, 1]


def test_plan_keeps_the_largest_weights_of_each_group() -> None:
    model = nn.Linear(8, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.1, -0.9, 0.5, 0.2, 3.0, 0.0, -3.0, 1.0]]))
    allocation = cost_models.plan(model, "params", 0.5, nm=(2, 4))
    expected = [False, True, True, False, True, False, True, False]
    assert allocation.masks["weight"].tolist() == expected


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({}, r"^nm: 2:4 .*'conv1' .*K=27"),
        ({"exclude": ["conv1"], "target": 0.3}, r"^target: 2:4 keeps .*not 0\.3"),
        ({"exclude": ["conv1"], "structure": (4, 4)}, r"^nm: .*block_shape"),
        ({"exclude": ["conv1"], "distribution": "erk"}, r"^distribution: 'erk'"),
    ],
)
def test_plan_errors_name_the_field(
    tiny_convnet: nn.Module, kwargs: dict[str, object], pattern: str
) -> None:
    with pytest.raises(ValueError, match=pattern):
        cost_models.plan(tiny_convnet, "params", nm=(2, 4), **kwargs)  # type: ignore[arg-type]


def test_the_sparsifier_prices_nm_weights_with_their_index_metadata() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    config = SparsifierConfig(nm=(2, 4), cost_model=cost_models.get("memory"))
    sparsifier = Sparsifier(model, config, total_steps=4)
    assert {layer.cost for layer in sparsifier.layers} == {4.25}  # float32 + 2 bits per kept
    assert sparsifier.target == 0.5


def test_report_of_a_trained_nm_model(tiny_convnet: nn.Module) -> None:
    memory = cost_models.get("memory")
    config = SparsifierConfig(nm=(2, 4), exclude=("conv1",), cost_model=memory, warmup_frac=0.0)
    sparsifier = Sparsifier(tiny_convnet, config, total_steps=2)
    masks = sparsifier.masks()
    sparsifier.finalize()
    report = cost_models.cost_report(
        tiny_convnet, "memory", INPUT_SIZE, nm=(2, 4), masks=masks, latency_repeats=0
    )
    assert report.nm == [2, 4]
    rows = {row.name: row for row in report.layers}
    assert rows["conv1.weight"].nm is None
    for name in ("conv2.weight", "fc.weight"):
        row = rows[name]
        assert row.nm == [2, 4] and row.density == 0.5 and row.block_shape == [1, 1]
        assert row.cost_per_entry == 4.25
        assert row.sparse_cost == 4.25 * row.weights / 2
    assert report.totals.masked_cost_fraction == 0.5
    unmasked = rows["conv1.weight"].dense_cost
    expected = (4.25 * MASKED / 2 + unmasked) / (4.25 * MASKED + unmasked)
    assert report.totals.cost_fraction == pytest.approx(expected)
    finalized = cost_models.cost_report(
        tiny_convnet, "params", nm=(2, 4), exclude=["conv1"], latency_repeats=0
    )
    assert {r.name: r.kept_entries for r in finalized.layers if r.masked} == {
        "conv2.weight": 16 * 72 // 2,
        "fc.weight": 10 * 16 // 2,
    }
    data = json.loads(report.to_json())
    assert data["nm"] == [2, 4]
    assert CostReport.from_dict(data) == report
    table = list(csv.DictReader(io.StringIO(report.to_csv())))
    assert [row["nm"] for row in table] == ["", "2x4", "2x4"]

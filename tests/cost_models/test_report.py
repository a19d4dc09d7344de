"""The cost report: rows, totals, masks, JSON/CSV forms and measured latency."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest
import torch
from torch import nn

import cost_models
from cost_models.report import CSV_COLUMNS, CostReport
from spartan_core import Sparsifier, SparsifierConfig
from tests.cost_models.conftest import INPUT_SIZE

COST_MODELS = {
    "params": "params",
    "flops": {"name": "flops", "params": {"input_size": INPUT_SIZE}},
    "memory": {"name": "memory", "params": {"format": "bsr"}},
    "table": {
        "name": "latency_table",
        "params": {
            "table": {
                "unit": "us",
                "default": {"per_weight": 1.0, "fixed": 3.0},
                "layers": {"fc": {"per_weight": 10.0}},
            }
        },
    },
}


def assert_totals_are_row_sums(report: CostReport) -> None:
    rows, tot = report.layers, report.totals
    for field in ("entries", "kept_entries"):
        assert getattr(tot, field) == sum(getattr(r, field) for r in rows)
    for field in ("dense_cost", "sparse_cost", "fixed_cost"):
        assert getattr(tot, field) == pytest.approx(math.fsum(getattr(r, field) for r in rows))
    masked = [r for r in rows if r.masked]
    assert tot.masked_weights == sum(r.weights for r in masked)
    assert tot.zero_masked_weights == sum(r.zero_weights for r in masked)
    assert tot.sparsity == pytest.approx(tot.zero_masked_weights / tot.masked_weights)
    assert tot.cost_fraction == pytest.approx(tot.sparse_cost / tot.dense_cost)
    assert tot.dense_total_cost == pytest.approx(tot.dense_cost + tot.fixed_cost)
    for r in rows:
        assert r.dense_cost == pytest.approx(r.cost_per_entry * r.entries)
        assert r.sparse_cost == pytest.approx(r.cost_per_entry * r.kept_entries)
        assert r.density == r.kept_entries / r.entries


@pytest.mark.parametrize("cost_model", list(COST_MODELS), ids=list(COST_MODELS))
@pytest.mark.parametrize("block", [(1, 1), (2, 2)])
@pytest.mark.parametrize("distribution", ["global", "uniform", "erk"])
def test_planned_model_reaches_the_target_within_one_block_per_layer(
    tiny_convnet: nn.Module, cost_model: str, block: tuple[int, int], distribution: str
) -> None:
    target = 0.6  # conv1, left dense, is 43% of the MACs
    cm = cost_models.resolve(COST_MODELS[cost_model])
    allocation = cost_models.plan(
        tiny_convnet, cm, target, structure=block, distribution=distribution, exclude=["conv1"]
    )
    allocation.apply(tiny_convnet)
    report = cost_models.cost_report(
        tiny_convnet, cm, INPUT_SIZE, block_shape=block, exclude=["conv1"], latency_repeats=0
    )
    assert_totals_are_row_sums(report)
    one_block_per_layer = sum(r.cost_per_entry for r in report.layers if r.masked)
    assert abs(report.totals.sparse_cost - target * report.totals.dense_cost) <= one_block_per_layer
    assert report.totals.cost_fraction == pytest.approx(allocation.totals.cost_fraction)
    (conv1,) = [r for r in report.layers if r.name == "conv1.weight"]
    assert not conv1.masked and conv1.density == 1.0
    assert [r.kept_entries for r in report.layers] == [r.kept_entries for r in allocation.layers]


def test_masked_model_from_the_sparsifier(tiny_convnet: nn.Module) -> None:
    config = SparsifierConfig(target=0.3, include=("conv2", "fc"), warmup_frac=0.0)
    sparsifier = Sparsifier(tiny_convnet, config, total_steps=10)
    sparsifier.step()
    report = cost_models.cost_report(tiny_convnet, "params", INPUT_SIZE, latency_repeats=1)
    assert [r.name for r in report.layers if r.masked] == ["conv2.weight", "fc.weight"]
    densities = sparsifier.layer_densities()
    for row in report.layers:
        if row.masked:
            assert row.density == densities[row.name]
    assert report.totals.cost_fraction == pytest.approx(sparsifier.kept_cost_fraction())
    assert report.measured_latency is not None
    assert tiny_convnet._forward_pre_hooks  # the Sparsifier is still attached
    tiny_convnet(torch.randn(2, *INPUT_SIZE)).sum().backward()  # and the model still works
    sparsifier.step()
    finalized = cost_models.cost_report(
        sparsifier.finalize(), "params", include=["conv2", "fc"], latency_repeats=0
    )
    assert [r.kept_entries for r in finalized.layers] == [r.kept_entries for r in report.layers]


def test_explicit_masks(tiny_convnet: nn.Module) -> None:
    weight_mask = torch.zeros(10, 16, dtype=torch.bool)
    weight_mask[:, :4] = True
    grid_mask = torch.zeros(16 // 2, 72 // 2)
    grid_mask[0, :3] = 1.0
    masks = {"fc.weight": weight_mask, "conv2.weight": torch.ones(16, 8, 3, 3)}
    report = cost_models.cost_report(tiny_convnet, "params", masks=masks, latency_repeats=0)
    rows = {r.name: r for r in report.layers}
    assert rows["fc.weight"].kept_entries == 40 and rows["fc.weight"].zero_weights == 120
    assert rows["conv2.weight"].kept_entries == 16 * 72
    assert not rows["conv1.weight"].masked and rows["conv1.weight"].kept_entries == 8 * 27
    blocks = cost_models.cost_report(
        tiny_convnet,
        "params",
        block_shape=(2, 2),
        masks={"conv2.weight": grid_mask},
        latency_repeats=0,
    )
    (row,) = [r for r in blocks.layers if r.masked]
    assert row.kept_entries == 3 and row.zero_weights == 16 * 72 - 12
    assert blocks.totals.sparsity == row.sparsity


def test_mask_errors(tiny_convnet: nn.Module) -> None:
    with pytest.raises(ValueError, match=r"masks: \['head.weight'\] are not maskable"):
        cost_models.cost_report(
            tiny_convnet, masks={"head.weight": torch.ones(1)}, latency_repeats=0
        )
    with pytest.raises(ValueError, match=r"masks\['fc.weight'\]: shape \(3,\)"):
        cost_models.cost_report(tiny_convnet, masks={"fc.weight": torch.ones(3)}, latency_repeats=0)
    with pytest.raises(ValueError, match="masks: empty"):
        cost_models.cost_report(tiny_convnet, masks={}, latency_repeats=0)


def test_argument_errors(tiny_convnet: nn.Module) -> None:
    with pytest.raises(ValueError, match="input_size: needed to measure latency"):
        cost_models.cost_report(tiny_convnet, "params")
    with pytest.raises(ValueError, match="batch_size"):
        cost_models.cost_report(tiny_convnet, "params", INPUT_SIZE, batch_size=0)
    with pytest.raises(ValueError, match="latency_repeats"):
        cost_models.cost_report(tiny_convnet, "params", INPUT_SIZE, latency_repeats=-1)
    with pytest.raises(ValueError, match="block_shape"):
        cost_models.cost_report(tiny_convnet, "params", block_shape=(3, 3), latency_repeats=0)
    with pytest.raises(ValueError, match="unknown cost model"):
        cost_models.cost_report(tiny_convnet, "speed", latency_repeats=0)


def test_json_csv_and_latency(tiny_convnet: nn.Module) -> None:
    cm = cost_models.resolve(COST_MODELS["table"])
    cost_models.plan(tiny_convnet, cm, 0.5).apply(tiny_convnet)
    report = cost_models.cost_report(tiny_convnet, cm, INPUT_SIZE, latency_repeats=2, batch_size=3)
    data = json.loads(report.to_json())
    assert data["schema_version"] == 2
    assert data["cost_model"]["name"] == "latency_table" and data["totals"]["unit"] == "us"
    assert CostReport.from_dict(data) == report
    measured, deployment = data["measured_latency"], data["deployment"]
    assert measured["batch_size"] == 3 and measured["device"] == "cpu"
    assert measured["dense_ms"] > 0 and measured["sparse_ms"] > 0
    assert measured["sparse_kernel"] == "deployed"
    # one rule: the summary is the deployment's end-to-end measurement
    assert measured["dense_ms"] == deployment["dense_ms"]
    assert measured["sparse_ms"] == deployment["deployed_ms"]
    assert deployment["batch_size"] == 3 and deployment["input_shape"] == [3, *INPUT_SIZE]
    totals = report.totals
    assert totals.predicted_sparse_latency_ms == pytest.approx(
        sum(r.predicted_sparse_latency_ms for r in report.layers)
    )
    assert totals.predicted_sparse_latency_ms == pytest.approx(totals.sparse_total_cost / 1000)
    rows = list(csv.DictReader(io.StringIO(report.to_csv())))
    assert list(rows[0]) == CSV_COLUMNS
    assert [r["name"] for r in rows] == [r.name for r in report.layers]
    assert rows[0]["weight_shape"] == "8x3x3x3" and rows[0]["block_shape"] == "1x1"
    assert float(rows[-1]["sparse_cost"]) == report.layers[-1].sparse_cost
    with pytest.raises(ValueError, match="schema_version"):
        CostReport.from_dict({**data, "schema_version": 99})


def test_transformer_report_with_latency() -> None:
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True)
    report = cost_models.cost_report(layer, "flops", (5, 16), latency_repeats=1)
    types = {r.name: r.type for r in report.layers}
    assert types["self_attn.in_proj_weight"] == "mha_in_proj"
    assert report.totals.dense_cost == 5 * (3 * 16 * 16 + 16 * 16 + 2 * 16 * 32)
    assert report.measured_latency.sparse_ms > 0
    assert {layer.module for layer in report.deployment.layers} == {"linear1", "linear2"}


def _deploy_report(kernel_ms: dict[str, tuple[str, float, float]]) -> dict:
    """A deploy report with given (kernel, dense_ms, deployed_ms) per layer."""
    rows = [
        {"name": name, "type": "Conv2d", "layout": {"kind": "unstructured"}, "kernel": k,
         "dense_ms": d, "deployed_ms": s, "speedup": d / s}
        for name, (k, d, s) in kernel_ms.items()
    ]  # fmt: skip
    return {
        "device": "cpu",
        "threads": 1,
        "dtype": "float32",
        "input_shape": [4, *INPUT_SIZE],
        "batch_size": 4,
        "layers": rows,
        "totals": {"dense_ms": 0.5, "deployed_ms": 0.25, "speedup": 2.0, "kernels": {"dense": 3}},
    }


def test_deployment_beside_the_prediction(tiny_convnet: nn.Module) -> None:
    cm = cost_models.resolve(COST_MODELS["table"])  # microseconds: predicts latency
    deploy_report = _deploy_report(
        {
            "conv1": ("dense", 0.1, 0.1),
            "conv2": ("native_csr", 0.2, 0.05),
            "fc": ("dense", 0.01, 0.01),
        }
    )
    report = cost_models.cost_report(tiny_convnet, cm, INPUT_SIZE, deployment=deploy_report)
    deployment = report.deployment
    assert deployment.batch_size == 4 and deployment.kernels == {"dense": 3}
    assert deployment.kernel_choice() == {"conv1": "dense", "conv2": "native_csr", "fc": "dense"}
    rows = {r.module: r for r in report.layers}
    for layer in deployment.layers:
        assert layer.predicted_ms == rows[layer.module].predicted_sparse_latency_ms
        want = (layer.predicted_ms - layer.deployed_ms) / layer.deployed_ms
        assert layer.relative_error == pytest.approx(want)
    assert deployment.predicted_ms == pytest.approx(report.totals.predicted_sparse_latency_ms)
    assert deployment.relative_error == pytest.approx((deployment.predicted_ms - 0.25) / 0.25)
    assert deployment.dense_relative_error == pytest.approx(
        (report.totals.predicted_dense_latency_ms - 0.5) / 0.5
    )
    assert report.measured_latency.sparse_ms == 0.25 and report.measured_latency.batch_size == 4
    assert CostReport.from_dict(json.loads(report.to_json())) == report


def test_deployment_without_a_latency_prediction(tiny_convnet: nn.Module) -> None:
    deploy_report = _deploy_report({"conv1": ("dense", 0.1, 0.1)})
    report = cost_models.cost_report(tiny_convnet, "params", deployment=deploy_report)
    assert report.deployment.predicted_ms is None and report.deployment.relative_error is None
    assert report.deployment.layers[0].relative_error is None
    with pytest.raises(ValueError, match=r"deployment: expected a cost_models\.deploy report"):
        cost_models.cost_report(tiny_convnet, "params", deployment={"device": "cpu"})

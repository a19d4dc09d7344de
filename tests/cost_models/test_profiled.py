"""profiled: sparse-kernel timings fitted to latency = a + b * kept_blocks per layer."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

import cost_models
from cost_models.profiled import fit_line
from spartan_core.layers import maskable_targets
from tests.cost_models.conftest import INPUT_SIZE

FAST = {"input_size": INPUT_SIZE, "densities": (0.25, 0.5, 1.0), "repeats": 2, "warmup": 0}


def test_fit_recovers_an_exact_line() -> None:
    fit = fit_line([10, 20, 40], [1.5, 2.0, 3.0], n_blocks=40)
    assert fit.fixed_ms == pytest.approx(1.0)
    assert fit.per_block_ms == pytest.approx(0.05)
    assert fit.r2 == pytest.approx(1.0)
    assert fit.rel_rms == pytest.approx(0.0, abs=1e-12)
    assert not fit.clamped


def test_prediction_passes_through_the_measured_times() -> None:
    # times growing faster than the kept count (an unstructured conv): the clamped line
    # through the origin misses the small counts; the prediction must not
    kept, times = [5, 25, 50, 100], [0.23, 0.73, 2.42, 7.85]
    fit = replace(fit_line(kept, times, n_blocks=100), dense_ms=6.0)
    assert fit.clamped and fit.fixed_ms == 0.0
    assert fit.fixed_ms + fit.per_block_ms * 5 > 1.5 * 0.23  # the line alone is far off
    for k, t in zip(kept[:-1], times[:-1], strict=True):
        assert fit.deployed_ms(k) == pytest.approx(t)
    assert fit.deployed_ms(100) == 6.0  # dense is faster there
    assert fit.deployed_ms(15) == pytest.approx((0.23 + 0.73) / 2)
    assert fit.deployed_ms(0) == 0.0
    assert replace(fit, dense_ms=None).deployed_ms(120) == pytest.approx(
        7.85 + 20 * fit.per_block_ms
    )


def test_fit_keeps_costs_valid() -> None:
    # decreasing times (noise): the slope is floored at a small positive value
    flat = fit_line([10, 20, 40], [2.0, 1.9, 1.8], n_blocks=40)
    assert flat.clamped and flat.per_block_ms > 0 and flat.fixed_ms >= 0
    # a negative intercept is refitted through the origin
    steep = fit_line([10, 20, 40], [0.5, 1.5, 3.5], n_blocks=40)
    assert steep.clamped and steep.fixed_ms == 0.0 and steep.per_block_ms > 0
    constant = fit_line([1, 2], [1.0, 1.0], n_blocks=2)
    assert math.isnan(constant.r2) and constant.to_dict()["r2"] is None


def test_profiles_every_layer_of_a_tiny_net(tiny_convnet: nn.Module) -> None:
    cm = cost_models.get("profiled", **FAST)
    targets = maskable_targets(tiny_convnet)
    costs = cm.layer_costs(tiny_convnet, targets, (1, 1))
    assert cm.predicts_latency and cm.unit == "ms"
    for t in targets:
        fit = cm.fits[t.name]
        assert costs[t.name].per_entry == fit.per_block_ms > 0
        assert costs[t.name].fixed == fit.fixed_ms >= 0
        assert len(fit.times_ms) == 3 and all(x > 0 for x in fit.times_ms)
        assert fit.kept_blocks[-1] == t.numel
        assert cm.layer_details(t.name)["fit"]["kept_blocks"] == list(fit.kept_blocks)


def test_blocks_and_report_details(tiny_convnet: nn.Module) -> None:
    cm = cost_models.get("profiled", **FAST)
    report = cost_models.cost_report(
        tiny_convnet, cm, include=["conv2"], block_shape=(4, 4), latency_repeats=0
    )
    (row,) = [r for r in report.layers if r.masked]
    assert row.details["fit"]["kept_blocks"][-1] == row.entries == (16 // 4) * (72 // 4)
    fit = cm.fits[row.name]
    # every block kept: the time measured there, or dense where that is faster
    assert row.predicted_dense_latency_ms == pytest.approx(min(fit.times_ms[-1], fit.dense_ms))


def test_attention_layers_are_profiled() -> None:
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=16, batch_first=True)
    cm = cost_models.get("profiled", **{**FAST, "input_size": (5, 16)})
    costs = cm.layer_costs(layer, maskable_targets(layer), (1, 1))
    assert costs["self_attn.in_proj_weight"].per_entry > 0
    assert costs["self_attn.out_proj.weight"].per_entry > 0
    # MultiheadAttention reads out_proj.weight instead of calling out_proj: both of its
    # weights count their dense time in the rest; the feed-forward Linears are replayed
    assert cm._replayed == {"linear1", "linear2"}
    attention = ("self_attn.in_proj_weight", "self_attn.out_proj.weight")
    assert cm.base_ms == pytest.approx(
        max(cm.rest_ms - sum(cm.fits[name].dense_ms for name in attention), 0.0)
    )


def test_the_rest_of_the_model_is_timed_with_its_layers_replayed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cost_models import profiled

    ran: list[str] = []

    class Counted(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            ran.append("layer")
            return super().forward(x)

    torch.manual_seed(0)
    model = nn.Sequential(Counted(6, 12), nn.ReLU(), Counted(12, 3)).eval()
    timed: list[tuple[int, object]] = []

    def fake_timed_ms(fn, *, device=None):
        before = len(ran)
        out = fn()
        timed.append((len(ran) - before, out))
        return 2.5

    monkeypatch.setattr(profiled, "timed_ms", fake_timed_ms)
    cm = cost_models.get("profiled", **{**FAST, "input_size": (6,)})
    cm.layer_costs(model, maskable_targets(model), (1, 1))
    ((layers_run, out),) = timed
    assert layers_run == 0  # every priced layer answered by its replay
    x = torch.randn((1, 6), generator=torch.Generator().manual_seed(cm.seed))
    with torch.no_grad():
        assert torch.equal(out, model(x))  # the replays give what the layers gave
    assert cm.rest_ms == 2.5 and cm.base_ms == 2.5


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"densities": (0.5,)}, "densities"),
        ({"densities": (0.5, 0.5)}, "densities"),
        ({"densities": (0.0, 1.0)}, "densities"),
        ({"densities": "dense"}, "densities"),
        ({"repeats": 0}, "repeats"),
        ({"batch_size": 0}, "batch_size"),
        ({"warmup": -1}, "warmup"),
        ({"device": "warp-drive"}, "device"),
        ({"input_size": (3, -1, 8)}, "input_size"),
    ],
)
def test_bad_parameters(params: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        cost_models.get("profiled", **params)


def test_fits_time_the_deployment_kernels_and_dense(tiny_convnet: nn.Module) -> None:
    from cost_models.deployment import kernel_names

    cm = cost_models.get("profiled", **FAST)
    targets = maskable_targets(tiny_convnet)
    cm.layer_costs(tiny_convnet, targets, (1, 1))
    for t in targets:
        fit = cm.fits[t.name]
        assert fit.dense_ms is not None and fit.dense_ms > 0
        assert len(fit.kernels) == len(fit.kept_blocks)
        assert set(fit.kernels) <= set(kernel_names())
        # deployment keeps dense where it is faster: the prediction never exceeds dense
        assert fit.deployed_ms(max(fit.kept_blocks)) <= fit.dense_ms
        assert fit.deployed_ms(0) == pytest.approx(min(fit.fixed_ms, fit.dense_ms))


def test_model_latency_adds_the_rest_of_the_model(tiny_convnet: nn.Module) -> None:
    cm = cost_models.get("profiled", **FAST)
    assert cm.model_latency_ms({}) is None  # nothing measured yet
    targets = maskable_targets(tiny_convnet)
    cm.layer_costs(tiny_convnet, targets, (1, 1))
    assert cm.base_ms is not None and cm.base_ms >= 0
    dense = cm.model_latency_ms({})  # every layer dense
    assert dense == pytest.approx(cm.base_ms + sum(cm.fits[t.name].dense_ms for t in targets))
    kept = {t.name: 1 for t in targets}
    sparse = cm.model_latency_ms(kept)
    assert sparse == pytest.approx(
        cm.base_ms + sum(cm.fits[t.name].deployed_ms(1) for t in targets)
    )
    assert sparse <= dense


def test_report_predicts_the_deployed_model_end_to_end(tiny_convnet: nn.Module) -> None:
    torch.manual_seed(0)
    cm = cost_models.get("profiled", **FAST)
    targets = maskable_targets(tiny_convnet)
    cm.layer_costs(tiny_convnet, targets, (1, 1))
    with torch.no_grad():
        for t in targets:
            weight = tiny_convnet.get_submodule(t.module_name).weight
            weight.mul_(torch.rand_like(weight) < 0.2)
    deployed = cost_models.deploy(tiny_convnet.eval(), torch.randn(1, *INPUT_SIZE))
    report = cost_models.cost_report(
        tiny_convnet, cm, INPUT_SIZE, deployment=deployed.deploy_report
    )
    kept = {row.name: row.kept_entries for row in report.layers if row.masked}
    section = report.deployment
    assert section.predicted_ms == pytest.approx(cm.model_latency_ms(kept))
    assert section.predicted_dense_ms == pytest.approx(cm.model_latency_ms({}))
    measured = section.deployed_ms
    assert section.relative_error == pytest.approx((section.predicted_ms - measured) / measured)
    for row in report.layers:
        assert row.predicted_sparse_latency_ms == pytest.approx(
            cm.fits[row.name].deployed_ms(row.kept_entries)
        )

"""The Sparsifier: budgets, finalize, resume, read-outs and every ValueError."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from spartan_core import LayerCost, ParamsCost, Sparsifier, SparsifierConfig
from spartan_core.methods import METHODS
from tests.spartan_core import helpers


def _cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 16),
        nn.ReLU(),
        nn.Linear(16, 4),
    )


MASKED = 4 * 9 + 8 * 36 + 16 * 128 + 4 * 16  # weights of the four maskable layers


class _TwicePerWeight:
    """A cost model that is not ``params``: 2 units per weight."""

    name = "twice"
    unit = "units"

    def layer_costs(self, model, targets, block_shape):  # type: ignore[no-untyped-def]
        return {t.name: LayerCost(2.0 * block_shape[0] * block_shape[1]) for t in targets}


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("block_shape", [(1, 1), (4, 4)])
def test_finalize_gives_the_exact_target_count(method: str, block_shape: tuple[int, int]) -> None:
    model = _cnn()
    include = ["3", "6", "8"] if block_shape != (1, 1) else []  # the first conv has 4x9
    config = SparsifierConfig(
        method=method, target=0.1, block_shape=block_shape, include=include, beta_max=20.0
    )
    steps = 12
    sparsifier = Sparsifier(model, config, total_steps=steps)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    helpers.train(model, sparsifier, optimizer, helpers.batches(steps, 1))
    assert sparsifier.frozen
    masks = sparsifier.masks()
    model.eval()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        before = model(x)
    sparsifier.finalize()
    with torch.no_grad():
        assert_close(model(x), before, rtol=0, atol=0)
    kept = 0
    for target in sparsifier.targets:
        weight = model.get_submodule(target.module_name).weight
        assert type(model.get_submodule(target.module_name)) in (nn.Conv2d, nn.Linear)
        assert torch.all(weight[~masks[target.name]] == 0)  # exactly zero outside the mask
        kept += int((weight != 0).sum())
    masked = sum(t.numel for t in sparsifier.targets)
    dense = MASKED - masked
    expected = 0.1 * MASKED - dense  # the whole model keeps 10% of its maskable weights
    block = block_shape[0] * block_shape[1]
    assert expected <= kept < expected + block


def test_finalize_before_the_freeze_bakes_the_soft_mask() -> None:
    model = _cnn()
    config = SparsifierConfig(target=0.3, warmup_frac=0.0)
    sparsifier = Sparsifier(model, config, total_steps=10)
    values = sparsifier.mask_values()
    originals = {
        t.name: sparsifier._original(i).detach().clone() for i, t in enumerate(sparsifier.targets)
    }
    sparsifier.finalize()
    for target in sparsifier.targets:
        weight = model.get_submodule(target.module_name).weight
        assert_close(weight, originals[target.name] * values[target.name], rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="finalized"):
        sparsifier.step()


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("distribution", ["global", "erk"])
def test_resume_gives_bit_identical_masks(method: str, distribution: str) -> None:
    steps, cut = 14, 5  # the cut falls inside the warm-up
    config = SparsifierConfig(
        method=method, target=0.15, distribution=distribution, warmup_frac=0.5, finetune_frac=0.2
    )

    def build() -> tuple[nn.Module, torch.optim.Optimizer, Sparsifier]:
        model = _cnn()
        sparsifier = Sparsifier(model, config, total_steps=steps)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
        return model, optimizer, sparsifier

    resumed = helpers.assert_resume_is_bit_identical(build, helpers.batches(steps, 1), cut)
    assert resumed.frozen


def test_load_state_dict_rejects_a_different_sparsifier() -> None:
    state = Sparsifier(_cnn(), SparsifierConfig(target=0.5), total_steps=4).state_dict()
    other = Sparsifier(_cnn(), SparsifierConfig(target=0.5), total_steps=5)
    with pytest.raises(ValueError, match="total_steps"):
        other.load_state_dict(state)
    fewer = Sparsifier(_cnn(), SparsifierConfig(target=0.5, exclude=["8"]), total_steps=4)
    with pytest.raises(ValueError, match="layers"):
        fewer.load_state_dict(state)
    method = Sparsifier(_cnn(), SparsifierConfig(method="magnitude", target=0.5), total_steps=4)
    with pytest.raises(ValueError, match="method"):
        method.load_state_dict(state)


def test_state_dict_is_keyed_by_parameter_name() -> None:
    sparsifier = Sparsifier(_cnn(), SparsifierConfig(target=0.5), total_steps=4)
    state = sparsifier.state_dict()
    assert list(state["layers"]) == ["0.weight", "3.weight", "6.weight", "8.weight"]
    assert state["layers"]["6.weight"]["soft"].shape == (16, 128)


def test_excluded_layers_count_at_full_density() -> None:
    model = _cnn()
    config = SparsifierConfig(target=0.3, exclude=["0", "8"], warmup_frac=0.0)
    sparsifier = Sparsifier(model, config, total_steps=3)
    assert [t.name for t in sparsifier.targets] == ["3.weight", "6.weight"]
    dense = 4 * 9 + 4 * 16
    assert sparsifier.dense_cost == dense
    assert abs(sparsifier.kept_cost_fraction() - 0.3) * MASKED < 1
    masked_kept = sum(int(m.sum()) for m in sparsifier.masks().values())
    assert abs(masked_kept - (0.3 * MASKED - dense)) < 1  # the masked layers keep less than 30%
    assert masked_kept / (MASKED - dense) < 0.3


def test_unreachable_target_names_the_numbers() -> None:
    with pytest.raises(ValueError, match=r"target: .*unreachable.*dense cost 2400"):
        Sparsifier(_cnn(), SparsifierConfig(target=0.05, include=["0"]), total_steps=3)


def test_target_one_keeps_everything() -> None:
    model = _cnn()
    sparsifier = Sparsifier(model, SparsifierConfig(target=1.0, warmup_frac=0.0), total_steps=3)
    helpers.train(
        model, sparsifier, torch.optim.SGD(model.parameters(), lr=0.01), helpers.batches(3, 1)
    )
    assert all(bool(m.all()) for m in sparsifier.masks().values())
    assert sparsifier.kept_cost_fraction() == 1.0


def test_read_outs() -> None:
    model = _cnn()
    sparsifier = Sparsifier(model, SparsifierConfig(target=0.2, warmup_frac=0.0), total_steps=5)
    masks = sparsifier.masks()
    values = sparsifier.mask_values()
    densities = sparsifier.layer_densities()
    for target in sparsifier.targets:
        assert masks[target.name].dtype == torch.bool
        assert masks[target.name].shape == target.shape
        assert torch.equal(values[target.name] > 0, masks[target.name])
        assert densities[target.name] == pytest.approx(float(masks[target.name].float().mean()))
    stats = sparsifier.stats()
    assert stats["cost_fraction"] == 0.2 and stats["step"] == 0.0
    assert stats["kept_cost_fraction"] == pytest.approx(0.2, abs=1 / MASKED)
    assert "Sparsifier(method='spartan'" in repr(sparsifier)


def test_summary_counts_kept_weights_and_follows_the_schedule() -> None:
    model = _cnn()
    config = SparsifierConfig(target=0.25, block_shape=(1, 4), exclude=["0"], warmup_frac=0.5)
    sparsifier = Sparsifier(model, config, total_steps=4)
    helpers.train(
        model, sparsifier, torch.optim.SGD(model.parameters(), lr=0.01), helpers.batches(2, 1)
    )
    summary = sparsifier.summary()
    kept = sum(int(m.sum()) for m in sparsifier.masks().values())
    assert summary.kept_weights == kept
    assert summary.masked_weights == MASKED - 4 * 9
    assert summary.step == 2 and summary.frozen is False
    assert summary.cost_fraction == sparsifier.schedule.cost_fraction(2) == 0.25
    assert summary.beta == sparsifier.schedule.beta(2) == sparsifier.beta
    assert summary.kept_cost_fraction == sparsifier.kept_cost_fraction()
    assert sparsifier.stats()["dual_iterations"] == float(summary.dual_iterations)


def test_a_cost_model_object_prices_the_budget() -> None:
    class Pricey(ParamsCost):
        """The last layer costs 10 per weight."""

        name = "pricey"

        def layer_costs(self, model, targets, block_shape):  # type: ignore[no-untyped-def]
            costs = super().layer_costs(model, targets, block_shape)
            last = targets[-1].name
            costs[last] = type(costs[last])(costs[last].per_entry * 10)
            return costs

    model = _cnn()
    config = SparsifierConfig(target=0.2, warmup_frac=0.0, cost_model=Pricey())
    sparsifier = Sparsifier(model, config, total_steps=3)
    total = MASKED - 64 + 640
    kept = sum(int(m.sum()) * (10 if n == "8.weight" else 1) for n, m in sparsifier.masks().items())
    assert 0.2 * total <= kept < 0.2 * total + 10
    assert sparsifier.kept_cost_fraction() == pytest.approx(kept / total)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"method": "rigl"}, "method"),
        ({"target": 0.0}, "target"),
        ({"target": 1.5}, "target"),
        ({"target": math.nan}, "target"),
        ({"distribution": "layerwise"}, "distribution"),
        ({"block_shape": (0, 4)}, "block_shape"),
        ({"block_shape": (2,)}, "block_shape"),
        ({"block_shape": (1.5, 2)}, "block_shape"),
        ({"beta_init": 0.0}, "beta_init"),
        ({"beta_max": -1.0}, "beta_max"),
        ({"beta_max": math.inf}, "beta_max"),
        ({"beta_init": 5.0, "beta_max": 2.0}, "beta_max"),
        ({"warmup_frac": 1.0}, "warmup_frac"),
        ({"finetune_frac": -0.1}, "finetune_frac"),
        ({"warmup_frac": 0.6, "finetune_frac": 0.4}, "finetune_frac"),
        ({"annealing": "step"}, "annealing"),
        ({"include": "layer1.*"}, "include"),
        ({"exclude": [""]}, "exclude"),
        ({"cost_model": ""}, "cost_model"),
        ({"cost_model": "params"}, "cost_model"),
        ({"cost_model": 3}, "cost_model"),
        ({"value_scale": "max"}, "value_scale"),
    ],
)
def test_config_errors_name_the_field(changes: dict[str, object], field: str) -> None:
    kwargs: dict[str, object] = {"target": 0.5, **changes}
    with pytest.raises(ValueError, match=rf"^{field}: "):
        SparsifierConfig(**kwargs)  # type: ignore[arg-type]


def test_config_defaults_and_sparsity() -> None:
    config = SparsifierConfig.from_sparsity(0.9, block_shape=(4, 4))
    assert config.target == pytest.approx(0.1)
    assert config.method == "spartan" and config.distribution == "global"
    assert config.beta_init == 10.0 and config.beta_max == 10.0
    assert config.beta_max_effective == 40.0
    assert (config.warmup_frac, config.finetune_frac) == (0.2, 0.2)
    unstructured = SparsifierConfig(target=0.5)
    assert (unstructured.beta_init, unstructured.beta_max) == (3.0, 3.0)  # held at 3
    assert unstructured.layer_floor == 0.4
    assert SparsifierConfig(nm=(2, 4)).layer_floor == 0.0  # every N:M layer keeps n / m
    assert SparsifierConfig(nm=(2, 4)).beta_max == 3.0
    with pytest.raises(ValueError, match=r"^layer_floor: "):
        SparsifierConfig(nm=(2, 4), layer_floor=0.4)
    assert SparsifierConfig(target=0.5, layer_floor=0.0).layer_floor == 0.0  # published
    assert SparsifierConfig(target=0.5, beta_max=4.0).beta_init == 4.0  # default: min(10, max)
    assert SparsifierConfig(target=0.5, beta_init=1.0).beta_init == 1.0
    assert SparsifierConfig(target=0.5, include=["a*"]).include == ("a*",)
    assert isinstance(SparsifierConfig(target=0.5).cost_model, ParamsCost)
    with pytest.raises(ValueError, match=r"^sparsity: "):
        SparsifierConfig.from_sparsity(1.0)
    with pytest.raises(ValueError, match=r"^cost_model: "):
        SparsifierConfig.from_sparsity(0.5, cost_model=_TwicePerWeight())
    with pytest.raises(ValueError, match=r"^target: "):
        SparsifierConfig.from_sparsity(0.5, target=0.5)


@pytest.mark.parametrize("total", [0, -1, 2.5, True, None])
def test_bad_total_steps(total: object) -> None:
    with pytest.raises(ValueError, match=r"^total_steps: "):
        Sparsifier(_cnn(), SparsifierConfig(target=0.5), total_steps=total)  # type: ignore[arg-type]


def test_bad_model_and_config_objects() -> None:
    with pytest.raises(ValueError, match=r"^model: "):
        Sparsifier(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)), SparsifierConfig(target=0.5), 3)
    with pytest.raises(ValueError, match=r"^model: "):
        Sparsifier("resnet18", SparsifierConfig(target=0.5), 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^config: "):
        Sparsifier(_cnn(), {"target": 0.5}, 3)  # type: ignore[arg-type]


def test_block_shape_that_does_not_tile_names_the_layer() -> None:
    model = _cnn()
    with pytest.raises(ValueError, match=r"^block_shape: .*layer '0'"):
        Sparsifier(model, SparsifierConfig(target=0.5, block_shape=(4, 4)), total_steps=3)
    assert not any(isinstance(m, nn.Module) and hasattr(m, "parametrizations") for m in model)


def test_a_cost_model_name_is_resolved_by_the_caller() -> None:
    with pytest.raises(ValueError, match=r"^cost_model: .*cost_models\.get\(name\)"):
        SparsifierConfig(target=0.5, cost_model="flops")  # type: ignore[arg-type]


def test_include_matching_nothing() -> None:
    with pytest.raises(ValueError, match=r"^model: no maskable layer"):
        Sparsifier(_cnn(), SparsifierConfig(target=0.5, include=["encoder.*"]), 3)


def _starving_model(dtype: torch.dtype = torch.float32) -> nn.Module:
    """Two equal layers, the second with weights 1000x smaller: a global budget skips it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64)).to(dtype)
    with torch.no_grad():
        model[2].weight.mul_(1e-3)
    return model


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # native / PyTorch path
@pytest.mark.parametrize("method", sorted(METHODS))
def test_layer_floor_keeps_every_layer_alive(method: str, dtype: torch.dtype) -> None:
    kept = {}
    for floor in (0.0, 0.4):
        config = SparsifierConfig(method=method, target=0.1, warmup_frac=0.0, layer_floor=floor)
        sparsifier = Sparsifier(_starving_model(dtype), config, total_steps=10)
        kept[floor] = [int(layer.hard.sum()) for layer in sparsifier.layers]
        assert sum(kept[floor]) == 820  # the global budget still holds: ceil(10% of 8192)
    assert kept[0.0][1] == 0  # without a floor the small layer is pruned away
    assert kept[0.4][1] >= math.ceil(0.4 * 0.1 * 4096)  # 40% of the kept fraction


def test_layer_floor_leaves_per_layer_distributions_alone() -> None:
    config = SparsifierConfig(target=0.1, warmup_frac=0.0, distribution="uniform", layer_floor=0.9)
    sparsifier = Sparsifier(_starving_model(), config, total_steps=10)
    assert [int(layer.hard.sum()) for layer in sparsifier.layers] == [410, 410]


@pytest.mark.parametrize("floor", [-0.1, 1.0, float("nan"), "0.4"])
def test_layer_floor_must_be_a_fraction(floor: object) -> None:
    with pytest.raises(ValueError, match="layer_floor"):
        SparsifierConfig(target=0.1, layer_floor=floor)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_diverged_weights_are_named_in_a_floating_point_error(method: str) -> None:
    """A NaN weight (training diverged) is reported as such, naming the layer."""
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    sparsifier = Sparsifier(model, SparsifierConfig(method=method, target=0.5), total_steps=10)
    with torch.no_grad():
        model[2].parametrizations.weight.original[1, 3] = float("nan")
    with pytest.raises(FloatingPointError, match=r"step 1: the weights of 2\.weight are no"):
        sparsifier.step()

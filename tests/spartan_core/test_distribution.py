"""Budget distributions: every one spends exactly the budget; ERK caps and redistributes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spartan_core import Sparsifier, SparsifierConfig
from spartan_core.distribution import (
    DISTRIBUTIONS,
    LayerInfo,
    erk_densities,
    get_distribution,
)

LAYERS = [
    LayerInfo("conv1.weight", (16, 3, 3, 3), 432.0),
    LayerInfo("conv2.weight", (32, 16, 3, 3), 4608.0),
    LayerInfo("fc1.weight", (64, 512), 32768.0),
    LayerInfo("fc2.weight", (10, 64), 640.0 * 2.5),  # a pricier cost per weight
]
TOTAL = sum(layer.cost for layer in LAYERS)


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5, 0.97, 1.0])
def test_distributions_spend_the_budget(name: str, fraction: float) -> None:
    groups = get_distribution(name)(LAYERS, fraction)
    covered = sorted(i for group in groups for i in group.layers)
    assert covered == list(range(len(LAYERS)))  # each layer in exactly one group
    spent = sum(g.fraction * sum(LAYERS[i].cost for i in g.layers) for g in groups)
    assert spent == pytest.approx(fraction * TOTAL, rel=1e-12)
    assert all(0.0 < g.fraction <= 1.0 for g in groups)


def test_global_and_uniform_shapes() -> None:
    assert len(get_distribution("global")(LAYERS, 0.2)) == 1
    uniform = get_distribution("uniform")(LAYERS, 0.2)
    assert [g.fraction for g in uniform] == [0.2] * 4


def test_erk_follows_raw_scores_and_caps_at_one() -> None:
    raw = [sum(layer.shape) / torch.tensor(layer.shape).prod().item() for layer in LAYERS]
    below = erk_densities(LAYERS, 0.1)  # no layer reaches the cap: all proportional to raw
    assert [d / r for d, r in zip(below, raw, strict=True)] == pytest.approx(
        [below[0] / raw[0]] * 4
    )
    densities = erk_densities(LAYERS, 0.3)
    # fc2 (highest score) would exceed 1 and is made dense; the rest scale with raw
    assert densities[3] == 1.0
    ratios = [d / r for d, r in zip(densities[:3], raw[:3], strict=True)]
    assert ratios == pytest.approx([ratios[0]] * 3)
    assert all(d < 1.0 for d in densities[:3])
    assert ratios[0] > below[0] / raw[0]  # the capped layer's excess is redistributed


def test_erk_all_dense_at_one() -> None:
    assert erk_densities(LAYERS, 1.0) == [1.0] * 4


def test_unknown_distribution() -> None:
    with pytest.raises(ValueError, match="distribution"):
        get_distribution("random")
    with pytest.raises(ValueError, match="distribution"):
        SparsifierConfig(target=0.5, distribution="random")


@pytest.mark.parametrize("fraction", [0.0, 1.5])
def test_bad_fraction(fraction: float) -> None:
    with pytest.raises(ValueError, match="fraction"):
        get_distribution("uniform")(LAYERS, fraction)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 32), nn.Linear(32, 5)
    )


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_sparsifier_reaches_the_target_with_each_distribution(name: str) -> None:
    model = _model()
    config = SparsifierConfig(target=0.2, distribution=name, warmup_frac=0.0)
    sparsifier = Sparsifier(model, config, total_steps=4)
    total = sum(t.numel for t in sparsifier.targets)
    # within one entry per budget group
    groups = 1 if name == "global" else len(sparsifier.targets)
    assert abs(sparsifier.kept_cost_fraction() - 0.2) * total <= groups
    densities = sparsifier.layer_densities()
    if name == "uniform":
        assert all(abs(d - 0.2) < 0.02 for d in densities.values())
    if name == "erk":
        # smaller layers keep more (ERK), the big Linear keeps least
        assert densities["0.weight"] > densities["3.weight"]

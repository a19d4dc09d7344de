"""The Sparsifier with N:M structure: exact pattern, target, schedule, read-outs, resume,
and the gradient of Spartan's N:M masked weight."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from spartan_core import Sparsifier, SparsifierConfig, find_targets
from spartan_core.masking import DualGroup, MaskParametrization, NMSoftMask
from spartan_core.methods import METHODS, get_method
from spartan_core.nm import group_view
from tests.spartan_core import helpers


def _cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(4, 8, 3, stride=2, padding=1),  # K = 36
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=2),  # weight (8, 4, 3, 3): K = 36
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 16),
        nn.ReLU(),
        nn.Linear(16, 4),
    )


MASKED = 8 * 36 + 8 * 36 + 16 * 128 + 4 * 16


def _kept_per_group(weight: torch.Tensor, m: int) -> torch.Tensor:
    out = weight.shape[0]
    groups = weight.reshape(out, -1).reshape(out, -1, m)  # (out, K / m, m)
    return (groups != 0).sum(-1)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("nm", [(2, 4), (1, 4), (3, 6)])
def test_finalize_gives_the_exact_pattern(method: str, nm: tuple[int, int]) -> None:
    model = _cnn()
    steps = 10
    inputs = {"0": 36, "2": 36, "5": 128, "7": 16}  # K of each layer
    exclude = tuple(name for name, k in inputs.items() if k % nm[1])
    config = SparsifierConfig(method=method, nm=nm, exclude=exclude, warmup_frac=0.3)
    sparsifier = Sparsifier(model, config, total_steps=steps)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    helpers.train(model, sparsifier, optimizer, helpers.batches(steps, 4))
    masks = sparsifier.masks()
    model.eval()
    x = torch.randn(3, 4, 8, 8)
    with torch.no_grad():
        before = model(x)
    sparsifier.finalize()
    with torch.no_grad():
        assert_close(model(x), before)
    for target in sparsifier.targets:
        weight = model.get_submodule(target.module_name).weight
        assert type(weight) is nn.Parameter
        kept = _kept_per_group(weight.detach(), nm[1])
        assert torch.equal(kept, torch.full_like(kept, nm[0])), target.name
        assert torch.equal(_kept_per_group(masks[target.name], nm[1]), kept)
        assert torch.equal(weight != 0, masks[target.name])


def test_target_is_n_over_m_adjusted_for_dense_layers() -> None:
    sparsifier = Sparsifier(_cnn(), SparsifierConfig(nm=(2, 4), warmup_frac=0.0), total_steps=4)
    assert sparsifier.target == 0.5
    assert sparsifier.kept_cost_fraction() == 0.5
    config = SparsifierConfig(nm=(2, 4), exclude=["7"], warmup_frac=0.0)
    partial = Sparsifier(_cnn(), config, total_steps=4)
    dense = 4 * 16
    expected = (0.5 * (MASKED - dense) + dense) / MASKED
    assert partial.target == pytest.approx(expected)
    assert partial.kept_cost_fraction() == pytest.approx(expected)
    assert partial.cost_fraction == pytest.approx(expected)
    given = SparsifierConfig(nm=(2, 4), exclude=["7"], target=round(expected, 4))
    assert Sparsifier(_cnn(), given, total_steps=4).target == pytest.approx(expected)


def test_an_inconsistent_target_names_the_numbers() -> None:
    model = _cnn()
    with pytest.raises(ValueError, match=r"^target: 2:4 keeps n/m = 0\.5 .*keeps 0\.5, not 0\.3"):
        Sparsifier(model, SparsifierConfig(nm=(2, 4), target=0.3), total_steps=4)
    assert not any(hasattr(module, "parametrizations") for module in model.modules())


def test_layers_that_do_not_tile_are_named_before_the_model_is_touched() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 6), nn.Linear(6, 2)
    )
    with pytest.raises(ValueError, match=r"^nm: 2:8 .*2 layer\(s\): '0' .*K=27.*'3' .*K=6") as info:
        Sparsifier(model, SparsifierConfig(nm=(2, 8)), total_steps=4)
    assert "'2'" not in str(info.value)
    assert not any(hasattr(module, "parametrizations") for module in model.modules())


@pytest.mark.parametrize("method", sorted(METHODS))
def test_schedule_anneals_the_kept_mass_per_group(method: str) -> None:
    model = _cnn()
    steps = 20  # warm-up W = 8, freeze F = 16
    config = SparsifierConfig(
        method=method, nm=(2, 4), warmup_frac=0.4, finetune_frac=0.2, annealing="linear"
    )
    sparsifier = Sparsifier(model, config, total_steps=steps)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    counts: list[set[int]] = []

    def record() -> None:
        counts.append(
            {int(c) for m in sparsifier.masks().values() for c in group_view(m, 4).sum(1).unique()}
        )

    record()  # step 0: everything
    helpers.train(model, sparsifier, optimizer, helpers.batches(steps, 4), record)
    # k(s) = 4 - 2 s / 8, the hard mask keeps ceil(k) per group
    assert counts[0] == {4}
    assert counts[2] == {4}  # k = 3.5
    assert counts[4] == {3}  # k = 3
    assert counts[7] == {3}  # k = 2.25
    assert all(c == {2} for c in counts[8:])
    assert sparsifier.frozen
    frozen = sparsifier.masks()
    sparsifier.step()
    assert all(torch.equal(frozen[k], v) for k, v in sparsifier.masks().items())


def test_spartan_soft_masks_keep_the_scheduled_mass_per_group() -> None:
    model = _cnn()
    config = SparsifierConfig(nm=(2, 4), warmup_frac=0.5, annealing="linear", forward="soft")
    sparsifier = Sparsifier(model, config, total_steps=8)  # W = 4
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    helpers.train(model, sparsifier, optimizer, helpers.batches(2, 4))  # k = 4 - 2 * 2 / 4 = 3
    for layer in sparsifier.layers:
        sums = group_view(layer.soft, 4).sum(1)
        assert_close(sums, torch.full_like(sums, 3.0), atol=1e-5, rtol=0)
        assert torch.equal(group_view(layer.hard, 4).sum(1), torch.full_like(sums, 3).long())
        assert torch.isfinite(layer.nm_dual).all()
    values = sparsifier.mask_values()
    for layer in sparsifier.layers:
        assert_close(values[layer.name], layer.soft * layer.hard)
    stats = sparsifier.stats()
    assert stats["kept_cost_fraction"] == pytest.approx(sparsifier.kept_cost_fraction())
    assert stats["dual_iterations"] >= 1


def test_read_outs_and_state_keys() -> None:
    sparsifier = Sparsifier(_cnn(), SparsifierConfig(nm=(2, 4), warmup_frac=0.0), total_steps=4)
    densities = sparsifier.layer_densities()
    assert densities == dict.fromkeys(densities, 0.5)
    masks = sparsifier.masks()
    assert masks["2.weight"].shape == (8, 4, 3, 3) and masks["2.weight"].dtype == torch.bool
    state = sparsifier.state_dict()
    assert state["nm"] == [2, 4]
    assert state["layers"]["5.weight"]["nm_dual"].shape == (16 * 128 // 4,)
    other = Sparsifier(_cnn(), SparsifierConfig(target=0.5), total_steps=4)
    with pytest.raises(ValueError, match="nm"):
        other.load_state_dict(state)
    assert "target=0.5" in repr(sparsifier)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_resume_gives_bit_identical_masks(method: str) -> None:
    steps, cut = 12, 4  # the cut falls inside the warm-up
    config = SparsifierConfig(method=method, nm=(2, 4), warmup_frac=0.5, finetune_frac=0.2)

    def build() -> tuple[nn.Module, torch.optim.Optimizer, Sparsifier]:
        model = _cnn()
        sparsifier = Sparsifier(model, config, total_steps=steps)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        return model, optimizer, sparsifier

    helpers.assert_resume_is_bit_identical(build, helpers.batches(steps, 4), cut)


@pytest.mark.parametrize("cost", [1.0, 2.0])
def test_nm_soft_mask_gradcheck(cost: float, monkeypatch: pytest.MonkeyPatch) -> None:
    from spartan_core import methods

    monkeypatch.setitem(methods._NM_TOL, True, 1e-15)  # the finite differences need it
    linear = nn.Linear(8, 3).double()
    (target,) = find_targets(linear)
    method = get_method("spartan")

    def masked(weight: torch.Tensor) -> torch.Tensor:
        layer = MaskParametrization(target, weight, (1, 1), cost, method, nm=(2, 4))
        group = layer.group = DualGroup([layer])
        method.update_nm(group, weight.detach(), 2.0, 3.0, value_scale="none")
        layer.hard.fill_(True)  # the straight-through h is the identity in the backward
        return NMSoftMask.apply(weight, layer)

    g = torch.Generator().manual_seed(0)
    weight = (torch.rand(3, 8, generator=g, dtype=torch.float64) + 0.1) * torch.tensor(
        [1.0, -1.0] * 4, dtype=torch.float64
    )
    assert torch.autograd.gradcheck(masked, (weight.requires_grad_(),), eps=1e-6, atol=1e-6)


def test_nm_soft_mask_backward_is_straight_through_the_hard_mask() -> None:
    model = nn.Linear(8, 2)
    sparsifier = Sparsifier(model, SparsifierConfig(nm=(2, 4), warmup_frac=0.0), total_steps=8)
    (layer,) = sparsifier.layers
    x = torch.randn(5, 8)
    model(x).sum().backward()
    grad = model.parametrizations.weight.original.grad
    assert grad is not None and torch.isfinite(grad).all()
    assert (grad[~layer.hard] != 0).any()  # dropped weights still learn


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", sorted(METHODS))
def test_nm_on_cuda_matches_the_pattern(method: str) -> None:
    model = _cnn().cuda()
    config = SparsifierConfig(method=method, nm=(2, 4), warmup_frac=0.3)
    sparsifier = Sparsifier(model, config, total_steps=6)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    batches = [(x.cuda(), y.cuda()) for x, y in helpers.batches(6, 4)]
    helpers.train(model, sparsifier, optimizer, batches)
    sparsifier.finalize()
    for target in sparsifier.targets:
        kept = _kept_per_group(model.get_submodule(target.module_name).weight.detach(), 4)
        assert torch.equal(kept, torch.full_like(kept, 2)), target.name

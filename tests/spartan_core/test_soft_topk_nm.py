"""The per-group soft top-k of N:M: brute force, gradients, limits and every ValueError."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from spartan_core import soft_topk_nm
from spartan_core.soft_topk_nm import group_soft_backward


def _values(groups: int, m: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(groups, m, generator=g, dtype=torch.float64) + 0.05


def _bisect_group(u: list[float], kept: float, beta: float) -> float:
    """One group's dual by plain float64 bisection (the reference)."""
    lo, hi = min(u) - 50.0 / beta - 1.0, max(u) + 50.0 / beta + 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        mass = sum(1.0 / (1.0 + math.exp(-beta * (x - mid))) for x in u)
        lo, hi = (mid, hi) if mass > kept else (lo, mid)
    return 0.5 * (lo + hi)


@pytest.mark.parametrize(("m", "kept"), [(4, 2), (4, 1), (4, 3), (4, 2.5), (8, 3)])
@pytest.mark.parametrize("beta", [0.5, 10.0, 300.0])
def test_matches_a_bisection_on_each_groups_own_dual(m: int, kept: float, beta: float) -> None:
    values = _values(6, m)
    result = soft_topk_nm(values, kept, beta)
    duals = [_bisect_group(row, kept, beta) for row in values.tolist()]
    expected = torch.sigmoid(beta * (values - torch.tensor(duals, dtype=torch.float64)[:, None]))
    assert_close(result.mask, expected, atol=1e-8, rtol=0)
    if beta <= 10.0:  # at beta 300 the mask saturates and any dual in the gap is a root
        assert_close(result.dual, torch.tensor(duals, dtype=torch.float64), atol=1e-7, rtol=0)


@pytest.mark.parametrize("beta", [1e-3, 0.1, 1.0, 10.0, 1e3, 1e6])
def test_every_group_keeps_its_mass_for_every_beta(beta: float) -> None:
    values = _values(50, 4, seed=1)
    for kept in (2, 1.3):
        result = soft_topk_nm(values, kept, beta)
        sums = result.mask.sum(1)
        assert_close(sums, torch.full_like(sums, float(kept)), atol=1e-9, rtol=0)


def test_large_beta_gives_the_hard_top_n() -> None:
    values = _values(40, 4, seed=2)
    result = soft_topk_nm(values, 2, 1e7)
    top = values.topk(2, dim=1).indices
    expected = torch.zeros_like(values, dtype=torch.bool).scatter_(1, top, True)
    assert torch.equal(result.hard_mask, expected)
    assert_close(result.mask, expected.double(), atol=1e-6, rtol=0)


def test_all_equal_values_keep_n_over_m() -> None:
    values = torch.full((3, 4), 0.7, dtype=torch.float64)
    for beta in (0.1, 10.0, 1e4):
        result = soft_topk_nm(values, 2, beta)
        assert_close(result.mask, torch.full_like(values, 0.5), atol=1e-12, rtol=0)
    ties = soft_topk_nm(values, 2, 10.0).hard_mask
    assert ties.tolist() == [[True, True, False, False]] * 3  # ties to the lower index


def test_hard_mask_keeps_exactly_ceil_n_per_group() -> None:
    values = torch.tensor([[0.1, 0.5, 0.5, 0.2], [0.0, 0.0, 0.0, 0.0], [3.0, 1.0, 2.0, 4.0]])
    assert soft_topk_nm(values, 2, 5.0).hard_mask.tolist() == [
        [False, True, True, False],
        [True, True, False, False],
        [True, False, False, True],
    ]
    assert soft_topk_nm(values, 2.4, 5.0).hard_mask.sum(1).tolist() == [3, 3, 3]


@pytest.mark.parametrize(("shape", "kept", "beta"), [((3, 4), 2, 2.0), ((2, 8), 2.5, 5.0)])
def test_gradcheck(shape: tuple[int, int], kept: float, beta: float) -> None:
    values = _values(*shape, seed=3).requires_grad_()

    def mask(v: torch.Tensor) -> torch.Tensor:
        return soft_topk_nm(v, kept, beta, tol=1e-14).mask

    assert torch.autograd.gradcheck(mask, (values,), eps=1e-6, atol=1e-6)


def test_backward_is_the_implicit_gradient_within_each_group() -> None:
    values = _values(4, 4, seed=4).requires_grad_()
    result = soft_topk_nm(values, 2, 3.0)
    upstream = torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    (grad,) = torch.autograd.grad(result.mask, values, upstream)
    m = result.mask.detach()
    s = m * (1 - m)
    expected = 3.0 * s * (upstream - (upstream * s).sum(1, keepdim=True) / s.sum(1, keepdim=True))
    assert_close(grad, expected)
    assert_close(group_soft_backward(upstream, m, 3.0), expected)
    assert_close(grad.sum(1), torch.zeros(4, dtype=torch.float64), atol=1e-12, rtol=0)


def test_warm_start_reaches_the_same_duals() -> None:
    values = _values(100, 4, seed=6)
    cold = soft_topk_nm(values, 2, 10.0)
    moved = values * 1.01
    warm = soft_topk_nm(moved, 2, 10.0, dual_init=cold.dual)
    again = soft_topk_nm(moved, 2, 10.0)
    assert_close(warm.mask, again.mask, atol=1e-9, rtol=0)
    assert warm.iterations <= again.iterations


def test_full_mass_keeps_everything() -> None:
    result = soft_topk_nm(_values(3, 4), 4, 10.0)
    assert torch.equal(result.mask, torch.ones(3, 4, dtype=torch.float64))
    assert result.hard_mask.all()
    assert torch.isinf(result.dual).all() and (result.dual < 0).all()


def test_float32_and_extreme_products_stay_finite() -> None:
    values = (_values(20, 4, seed=7) * 1e3).float()
    result = soft_topk_nm(values, 2, 1e4)
    assert result.mask.dtype == torch.float32
    assert torch.isfinite(result.mask).all()
    assert_close(result.mask.sum(1), torch.full((20,), 2.0), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"values": torch.rand(8)}, "values"),
        ({"values": torch.rand(2, 1)}, "values"),
        ({"values": torch.tensor([[0.1, -0.2]])}, "values"),
        ({"values": torch.tensor([[0.1, math.nan]])}, "values"),
        ({"n": 0}, "n"),
        ({"n": 5}, "n"),
        ({"beta": 0.0}, "beta"),
        ({"beta": math.inf}, "beta"),
        ({"tol": -1.0}, "tol"),
        ({"max_iter": 0}, "max_iter"),
        ({"dual_init": torch.zeros(3)}, "dual_init"),
    ],
)
def test_bad_inputs_name_the_argument(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"values": torch.rand(2, 4), "n": 2, "beta": 1.0, **kwargs}
    with pytest.raises(ValueError, match=rf"^{field}: "):
        soft_topk_nm(**args)  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    values = _values(64, 4, seed=8)
    cpu = soft_topk_nm(values, 2, 10.0)
    gpu = soft_topk_nm(values.cuda(), 2, 10.0)
    assert_close(gpu.mask.cpu(), cpu.mask, atol=1e-9, rtol=0)
    assert torch.equal(gpu.hard_mask.cpu(), cpu.hard_mask)

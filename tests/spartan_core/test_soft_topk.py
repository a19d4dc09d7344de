"""Soft top-k under a cost budget (DESIGN 1.1): forward, backward, hard threshold, solver."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from spartan_core import hard_threshold, hard_threshold_and_dual, soft_mask, soft_topk, solve_dual
from spartan_core.numerics import to_bits
from spartan_core.soft_topk import SoftTopKFunction

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _values(kind: str, n: int, seed: int, dtype: torch.dtype = F64) -> torch.Tensor:
    """Non-negative test values: uniform, log-uniform over 1e-8..1e3 (with zeros), or ties."""
    g = _gen(seed)
    if kind == "uniform":
        v = torch.rand(n, generator=g, dtype=F64)
    elif kind == "wide":
        v = 10.0 ** (torch.rand(n, generator=g, dtype=F64) * 11 - 8)
        v[:: max(1, n // 7)] = 0.0
    elif kind == "ties":
        v = torch.randint(0, 5, (n,), generator=g).to(F64) / 4
    else:
        raise AssertionError(kind)
    return v.to(dtype)


def _costs(kind: str, n: int, seed: int, dtype: torch.dtype = F64) -> torch.Tensor | float:
    if kind == "unit":
        return 1.0
    if kind == "scalar":
        return 2.5
    g = _gen(seed + 1000)
    return (torch.rand(n, generator=g, dtype=F64) * 3 + 0.05).to(dtype)


def _cost_tensor(costs: torch.Tensor | float, n: int) -> torch.Tensor:
    if isinstance(costs, torch.Tensor):
        return costs.to(F64)
    return torch.full((n,), float(costs), dtype=F64)


def _brute_threshold(u: torch.Tensor, c: torch.Tensor, budget: float) -> float:
    """Sort by unit value, walk down until the cumulative cost first reaches the budget."""
    order = torch.sort(u.to(F64), descending=True, stable=True).indices
    cum = torch.cumsum(c.to(F64)[order], 0)
    first = int((cum < budget * (1 - 1e-10)).sum())
    return float(u.to(F64)[order][first])


def _reference_dual(u: torch.Tensor, c: torch.Tensor, budget: float, beta: float) -> float:
    """lam by plain bisection in float64 (slow, obviously correct)."""
    u, c = u.to(F64), c.to(F64)
    lo, hi = float(u.min()) - 50 / beta - 1, float(u.max()) + 50 / beta + 1
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if float((c * torch.sigmoid(beta * (u - mid))).sum()) > budget:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# --- forward ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value_kind", ["uniform", "wide", "ties"])
@pytest.mark.parametrize("cost_kind", ["unit", "scalar", "random"])
@pytest.mark.parametrize("beta", [0.01, 1.0, 20.0, 1e3, 1e4])
@pytest.mark.parametrize("fraction", [0.01, 0.3, 0.9])
def test_budget_met_float64(value_kind: str, cost_kind: str, beta: float, fraction: float) -> None:
    n = 300
    v = _values(value_kind, n, seed=int(beta * 7) + n)
    costs = _costs(cost_kind, n, seed=3)
    c = _cost_tensor(costs, n)
    budget = fraction * float(c.sum())
    r = soft_topk(v, costs, budget, beta)
    assert r.mask.dtype == F64
    assert torch.isfinite(r.mask).all()
    assert ((r.mask >= 0) & (r.mask <= 1)).all()
    assert abs(float((c * r.mask).sum()) - budget) <= 1e-6 * budget
    assert math.isfinite(r.dual)
    assert r.iterations >= 1
    u = v / c
    assert torch.equal(r.hard_mask, u >= r.threshold)
    assert r.threshold == _brute_threshold(u, c, budget)


@pytest.mark.parametrize("cost_kind", ["unit", "random"])
@pytest.mark.parametrize("beta", [1.0, 20.0, 1e4])
def test_budget_met_float32(cost_kind: str, beta: float) -> None:
    n = 5000
    v = _values("wide", n, seed=11, dtype=torch.float32)
    costs = _costs(cost_kind, n, seed=5, dtype=torch.float32)
    c = _cost_tensor(costs, n)
    budget = 0.2 * float(c.sum())
    r = soft_topk(v, costs, budget, beta)
    assert r.mask.dtype == torch.float32
    assert torch.isfinite(r.mask).all()
    assert abs(float((c * r.mask.double()).sum()) - budget) <= 1e-5 * budget
    # the returned dual reproduces the returned mask
    u = v if cost_kind == "unit" else v / costs
    torch.testing.assert_close(soft_mask(u, r.dual, beta), r.mask, rtol=0, atol=1e-6)


@pytest.mark.parametrize("cost_kind", ["unit", "random"])
@pytest.mark.parametrize("beta", [0.5, 20.0, 300.0])
def test_dual_matches_reference(cost_kind: str, beta: float) -> None:
    n = 200
    v = _values("uniform", n, seed=2)
    costs = _costs(cost_kind, n, seed=2)
    c = _cost_tensor(costs, n)
    budget = 0.25 * float(c.sum())
    r = soft_topk(v, costs, budget, beta, tol=1e-13)
    ref = _reference_dual(v / c, c, budget, beta)
    assert r.dual == pytest.approx(ref, abs=1e-9)
    expected = torch.sigmoid(beta * (v / c - ref))
    torch.testing.assert_close(r.mask, expected, rtol=0, atol=1e-8)


@pytest.mark.parametrize("cost_kind", ["unit", "random"])
def test_large_beta_equals_hard_topk(cost_kind: str) -> None:
    n = 400
    g = _gen(21)
    v = torch.randperm(n, generator=g).to(F64) / n + 0.01  # distinct, spacing 1/n
    costs = 1.0 if cost_kind == "unit" else torch.ones(n, dtype=F64)
    r = soft_topk(v, costs, 100.0, beta=1e5)
    assert int(r.hard_mask.sum()) == 100
    assert torch.equal(r.mask > 0.5, r.hard_mask)
    torch.testing.assert_close(r.mask, r.hard_mask.to(F64), rtol=0, atol=1e-6)


def test_soft_mask_tends_to_hard_mask_with_random_costs() -> None:
    n = 300
    v = _values("uniform", n, seed=8)
    c = _costs("random", n, seed=8)
    assert isinstance(c, torch.Tensor)
    # a budget exactly at a cumulative-cost step, so the hard top-k meets it exactly
    order = torch.sort(v / c, descending=True).indices
    budget = float(torch.cumsum(c[order], 0)[59])
    errors = []
    for beta in (1e1, 1e2, 1e3, 1e4):
        r = soft_topk(v, c, budget, beta, tol=1e-14)
        assert int(r.hard_mask.sum()) == 60
        errors.append(float((r.mask - r.hard_mask.to(F64)).abs().max()))
    assert errors[0] > errors[1] > errors[2]
    assert errors[3] < 1e-6


@pytest.mark.parametrize("cost_kind", ["unit", "random"])
@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.97])
@pytest.mark.parametrize("beta", [0.3, 20.0, 1e4])
def test_all_equal_values_give_fraction(cost_kind: str, fraction: float, beta: float) -> None:
    n = 50
    # integer costs and a dyadic unit value, so u = v / c is exactly 0.75 everywhere
    costs = 1.0 if cost_kind == "unit" else torch.randint(1, 9, (n,), generator=_gen(4)).to(F64)
    c = _cost_tensor(costs, n)
    v = 0.75 * c
    r = soft_topk(v, costs, fraction * float(c.sum()), beta)
    torch.testing.assert_close(r.mask, torch.full_like(v, fraction), rtol=0, atol=1e-9)
    assert r.hard_mask.all()  # ties at the threshold are all kept
    assert r.threshold == 0.75


def test_full_budget_keeps_everything_without_nan() -> None:
    v = torch.rand(20, dtype=F64, generator=_gen(1)).requires_grad_()
    r = soft_topk(v, 1.0, 20.0, 5.0)
    assert torch.equal(r.mask, torch.ones(20, dtype=F64))
    assert r.hard_mask.all()
    assert r.dual == -math.inf
    (r.mask * torch.arange(20.0, dtype=F64)).sum().backward()
    assert v.grad is not None
    assert torch.equal(v.grad, torch.zeros(20, dtype=F64))


def test_single_entry() -> None:
    v = torch.tensor([0.3], dtype=F64)
    full = soft_topk(v, 2.0, 2.0, 10.0)
    assert float(full.mask) == 1.0
    half = soft_topk(v, 2.0, 0.5, 10.0)
    assert float(half.mask) == pytest.approx(0.25, abs=1e-12)
    assert bool(half.hard_mask)  # the only entry is where the budget is first reached
    assert half.threshold == 0.3 / 2.0  # the unit value


def test_zero_values_and_extreme_beta_are_finite() -> None:
    v = torch.zeros(10, dtype=torch.float32)
    v[3] = 1e3
    for beta in (1e-3, 1.0, 1e4):
        r = soft_topk(v.clone().requires_grad_(), 1.0, 2.0, beta)
        assert torch.isfinite(r.mask).all()
        assert float(r.mask.detach().double().sum()) == pytest.approx(2.0, rel=1e-5)
    out = soft_mask(torch.tensor([0.0, 1e3, 1e-8]), 5.0, 1e4)
    assert torch.isfinite(out).all()
    assert soft_mask(torch.tensor([0.0, 1.0]), -math.inf, 3.0).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype: torch.dtype) -> None:
    v = torch.rand(100, generator=_gen(3)).to(dtype)
    r = soft_topk(v, 1.0, 30.0, 10.0)
    assert r.mask.dtype == dtype
    assert float(r.mask.double().sum()) == pytest.approx(30.0, rel=1e-2)


# --- hard threshold --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("value_kind", ["uniform", "wide", "ties"])
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_cost_weighted_threshold_matches_brute_force(
    seed: int, value_kind: str, dtype: torch.dtype
) -> None:
    n = 60
    v = _values(value_kind, n, seed=seed, dtype=dtype)
    c = _costs("random", n, seed=seed, dtype=dtype)
    assert isinstance(c, torch.Tensor)
    u = v / c
    total = float(c.double().sum())
    for fraction in (0.001, 0.13, 0.5, 0.99, 1.0):
        budget = fraction * total
        t = hard_threshold([(u, c)], budget)
        assert t == _brute_threshold(u, c, budget)
        kept = u >= t
        kept_cost = float(c.double()[kept].sum())
        assert kept_cost >= budget * (1 - 1e-10)
        # the entries strictly above the threshold do not reach the budget yet
        assert float(c.double()[u > t].sum()) < budget * (1 - 1e-10)


def test_unit_cost_count_is_exact_despite_rounding() -> None:
    v = torch.rand(1000, dtype=F64, generator=_gen(9))
    for fraction in (0.05, 0.1, 0.3, 0.7):  # fraction * 1000 is not exact in binary
        r = soft_topk(v, 1.0, fraction * 1000, 50.0)
        assert int(r.hard_mask.sum()) == round(fraction * 1000)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_multi_segment_threshold_and_dual_match_concatenation(dtype: torch.dtype) -> None:
    sizes = [17, 120, 3, 64]
    g = _gen(12)
    segments: list[tuple[torch.Tensor, float | torch.Tensor]] = []
    for j, size in enumerate(sizes):
        u = (torch.rand(size, generator=g, dtype=F64) * (j + 1)).to(dtype)
        cost: float | torch.Tensor = (
            float(j + 1)
            if j % 2 == 0
            else (torch.rand(size, generator=g, dtype=F64) + 0.5).to(dtype)
        )
        segments.append((u, cost))
    all_u = torch.cat([u for u, _ in segments]).to(F64)
    all_c = torch.cat([_cost_tensor(c, u.numel()) for u, c in segments])
    budget = 0.3 * float(all_c.sum())
    assert hard_threshold(segments, budget) == _brute_threshold(all_u, all_c, budget)
    lam, passes = solve_dual(segments, budget, 5.0)
    assert passes >= 1
    achieved = float((all_c * torch.sigmoid(5.0 * (all_u - lam))).sum())
    assert achieved == pytest.approx(budget, rel=1e-5 if dtype == torch.float32 else 1e-9)
    ref = _reference_dual(all_u, all_c, budget, 5.0)
    assert lam == pytest.approx(ref, abs=1e-5 if dtype == torch.float32 else 1e-9)


@pytest.mark.parametrize("warm", [False, True])
def test_combined_threshold_and_dual_match_separate_calls(warm: bool) -> None:
    g = _gen(14)
    segments: list[tuple[torch.Tensor, float | torch.Tensor]] = [
        (torch.rand(500, generator=g, dtype=F64), 1.0),
        (torch.rand(70, generator=g, dtype=F64) * 2, torch.rand(70, generator=g, dtype=F64) + 1),
    ]
    budget, beta = 120.0, 15.0
    t_init = 0.8 if warm else None
    d_init = 0.75 if warm else None
    t, lam, passes = hard_threshold_and_dual(
        segments, budget, beta, threshold_init=t_init, dual_init=d_init
    )
    assert t == hard_threshold(segments, budget, init=t_init)
    assert lam == pytest.approx(solve_dual(segments, budget, beta, init=d_init)[0], abs=1e-9)
    assert passes >= 1
    with pytest.raises(ValueError, match="beta"):
        hard_threshold_and_dual(segments, budget, 0.0)


# --- warm starts -----------------------------------------------------------------------------


@pytest.mark.parametrize("cost_kind", ["unit", "random"])
@pytest.mark.parametrize("beta", [1.0, 20.0, 1e3])
def test_warm_start_gives_the_same_root(cost_kind: str, beta: float) -> None:
    n = 2000
    v = _values("uniform", n, seed=31)
    costs = _costs(cost_kind, n, seed=31)
    c = _cost_tensor(costs, n)
    budget = 0.1 * float(c.sum())
    first = soft_topk(v, costs, budget, beta)
    # an optimizer-like step: small relative perturbation of the values
    v2 = v * (1 + 1e-3 * torch.randn(n, generator=_gen(32), dtype=F64)).abs()
    cold = soft_topk(v2, costs, budget, beta)
    warm = soft_topk(v2, costs, budget, beta, dual_init=first.dual, threshold_init=first.threshold)
    assert warm.dual == pytest.approx(cold.dual, abs=1e-8)
    assert warm.threshold == cold.threshold
    assert torch.equal(warm.hard_mask, cold.hard_mask)
    torch.testing.assert_close(warm.mask, cold.mask, rtol=0, atol=1e-8)
    assert warm.iterations <= 4


@pytest.mark.parametrize("init", [0.0, 1e-30, 0.5, 7.0, 1e30])
def test_threshold_with_any_init_is_exact(init: float) -> None:
    u = _values("wide", 500, seed=4)
    c = _costs("random", 500, seed=4)
    assert isinstance(c, torch.Tensor)
    budget = 0.4 * float(c.sum())
    assert hard_threshold([(u, c)], budget, init=init) == _brute_threshold(u, c, budget)


def test_solve_dual_warm_start_from_far_away() -> None:
    u = _values("uniform", 300, seed=6)
    cold, _ = solve_dual([(u, 1.0)], 30.0, 50.0)
    for init in (-1e6, -3.0, 0.0, 40.0, 1e9):
        lam, _ = solve_dual([(u, 1.0)], 30.0, 50.0, init=init)
        assert lam == pytest.approx(cold, abs=1e-9)


# --- backward --------------------------------------------------------------------------------


@pytest.mark.parametrize("cost_kind", ["unit", "scalar", "random"])
@pytest.mark.parametrize("beta", [0.5, 3.0, 20.0])
def test_gradcheck(cost_kind: str, beta: float) -> None:
    n = 12
    v = (_values("uniform", n, seed=int(beta * 10)) + 0.05).requires_grad_()
    costs = _costs(cost_kind, n, seed=1)
    budget = 0.4 * float(_cost_tensor(costs, n).sum())

    def fn(x: torch.Tensor) -> torch.Tensor:
        return soft_topk(x, costs, budget, beta, tol=1e-14).mask

    assert torch.autograd.gradcheck(fn, (v,), eps=1e-6, atol=1e-6)


def test_gradcheck_function_directly() -> None:
    v = (_values("uniform", 9, seed=3) + 0.1).requires_grad_()
    c = _costs("random", 9, seed=3)

    def fn(x: torch.Tensor) -> torch.Tensor:
        return SoftTopKFunction.apply(x, c, float(c.sum()), 4.0, 2.0, None, None, 1e-14, 100, None)[
            0
        ]

    assert torch.autograd.gradcheck(fn, (v,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("cost_kind", ["unit", "random"])
def test_gradient_matches_finite_differences_and_formula(cost_kind: str) -> None:
    n = 30
    beta = 7.0
    v = _values("uniform", n, seed=17) + 0.05
    costs = _costs(cost_kind, n, seed=17)
    c = _cost_tensor(costs, n)
    budget = 0.3 * float(c.sum())
    upstream = torch.randn(n, generator=_gen(18), dtype=F64)

    def loss(x: torch.Tensor) -> torch.Tensor:
        return (upstream * soft_topk(x, costs, budget, beta, tol=1e-15).mask).sum()

    x = v.clone().requires_grad_()
    loss(x).backward()
    assert x.grad is not None
    eps = 1e-6
    numeric = torch.empty(n, dtype=F64)
    for j in range(n):
        e = torch.zeros(n, dtype=F64)
        e[j] = eps
        numeric[j] = (loss(v + e) - loss(v - e)) / (2 * eps)
    torch.testing.assert_close(x.grad, numeric, rtol=1e-5, atol=1e-7)
    # and the closed form of DESIGN 1.1
    m = soft_topk(v, costs, budget, beta, tol=1e-15).mask
    s = m * (1 - m)
    formula = beta * s * (upstream / c - (upstream * s).sum() / (c * s).sum())
    torch.testing.assert_close(x.grad, formula, rtol=1e-9, atol=1e-12)


def test_costs_and_budget_get_no_gradient() -> None:
    v = torch.rand(10, dtype=F64, generator=_gen(2)).requires_grad_()
    c = (torch.rand(10, dtype=F64, generator=_gen(3)) + 0.5).requires_grad_()
    r = soft_topk(v, c, 2.0, 3.0)
    r.mask.sum().backward()
    assert c.grad is None
    assert v.grad is not None


def test_extreme_gradients_are_finite() -> None:
    v = _values("wide", 200, seed=5, dtype=torch.float32).requires_grad_()
    for beta in (1.0, 1e4):
        r = soft_topk(v, 1.0, 20.0, beta)
        (r.mask * torch.linspace(-1, 1, 200)).sum().backward()
        assert v.grad is not None
        assert torch.isfinite(v.grad).all()
        v.grad = None


# --- validation ------------------------------------------------------------------------------

_V = torch.rand(5, dtype=F64, generator=_gen(0))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"values": _V.reshape(5, 1)}, "values"),
        ({"values": torch.arange(5)}, "values"),
        ({"values": torch.tensor([0.1, math.nan, 0.2, 0.3, 0.4])}, "values"),
        ({"values": torch.tensor([0.1, math.inf, 0.2, 0.3, 0.4])}, "values"),
        ({"values": torch.tensor([0.1, -0.5, 0.2, 0.3, 0.4])}, "values"),
        ({"values": torch.empty(0, dtype=F64), "budget": 1.0}, "values"),
        ({"costs": torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0])}, "costs"),
        ({"costs": torch.tensor([1.0, -1.0, 1.0, 1.0, 1.0])}, "costs"),
        ({"costs": torch.tensor([1.0, math.inf, 1.0, 1.0, 1.0])}, "costs"),
        ({"costs": torch.tensor([1.0, math.nan, 1.0, 1.0, 1.0])}, "costs"),
        ({"costs": torch.ones(4)}, "costs"),
        ({"costs": 0.0}, "costs"),
        ({"costs": -2.0}, "costs"),
        ({"costs": "one"}, "costs"),
        ({"budget": 0.0}, "budget"),
        ({"budget": -1.0}, "budget"),
        ({"budget": 5.5}, "budget"),
        ({"budget": math.nan}, "budget"),
        ({"beta": 0.0}, "beta"),
        ({"beta": -1.0}, "beta"),
        ({"beta": math.inf}, "beta"),
        ({"max_iter": 0}, "max_iter"),
        ({"tol": -1e-3}, "tol"),
    ],
)
def test_soft_topk_rejects_bad_input(kwargs: dict, name: str) -> None:
    args = {"values": _V, "costs": 1.0, "budget": 2.0, "beta": 5.0} | kwargs
    with pytest.raises(ValueError, match=name):
        soft_topk(**args)


@pytest.mark.parametrize(
    ("segments", "budget", "name"),
    [
        ([], 1.0, "segments"),
        (_V, 1.0, "segments"),
        ([(_V,)], 1.0, "segments"),
        ([(_V, 1.0), (_V.reshape(5, 1), 1.0)], 1.0, r"segments\[1\] unit values"),
        ([(torch.tensor([0.1, math.nan]), 1.0)], 1.0, r"segments\[0\] unit values"),
        ([(torch.tensor([0.1, -1.0]), 1.0)], 1.0, r"segments\[0\] unit values"),
        ([(_V, 0.0)], 1.0, r"segments\[0\] cost"),
        ([(_V, torch.zeros(5))], 1.0, r"segments\[0\] cost"),
        ([(_V, torch.ones(3))], 1.0, r"segments\[0\] cost"),
        ([(_V, 1.0)], 0.0, "budget"),
        ([(_V, 1.0)], 6.0, "budget"),
    ],
)
def test_segment_functions_reject_bad_input(segments: object, budget: float, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        hard_threshold(segments, budget)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=name):
        solve_dual(segments, budget, 2.0)  # type: ignore[arg-type]


def test_solve_dual_and_soft_mask_reject_bad_beta() -> None:
    with pytest.raises(ValueError, match="beta"):
        solve_dual([(_V, 1.0)], 2.0, 0.0)
    with pytest.raises(ValueError, match="beta"):
        soft_mask(_V, 0.3, -1.0)
    with pytest.raises(ValueError, match="unit_values"):
        soft_mask(torch.arange(3), 0.3, 1.0)  # type: ignore[arg-type]


# --- selection internals: window misses, moves and recursion ---------------------------------


@pytest.mark.parametrize("value_kind", ["uniform", "wide", "ties"])
@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("fraction", [0.002, 0.5, 0.999])
@pytest.mark.parametrize("first_window", ["above", "below", "sample"])
def test_selection_recovers_from_bad_windows(
    monkeypatch: pytest.MonkeyPatch,
    value_kind: str,
    dtype: torch.dtype,
    fraction: float,
    first_window: str,
) -> None:
    st = importlib.import_module("spartan_core.threshold")
    monkeypatch.setattr(st, "_SORT_MIN", 8)  # windows of more than 16 entries recurse
    g = _gen(77)
    segments: list[tuple[torch.Tensor, float | torch.Tensor]] = [
        (_values(value_kind, 3000, seed=1, dtype=dtype), 1.0),
        (_values(value_kind, 500, seed=2, dtype=dtype) * 3, 2.0),
        (
            _values(value_kind, 700, seed=3, dtype=dtype),
            (torch.rand(700, generator=g, dtype=F64) + 0.5).to(dtype),
        ),
    ]
    all_u = torch.cat([u for u, _ in segments]).to(F64)
    all_c = torch.cat([_cost_tensor(c, u.numel()) for u, c in segments])
    budget = fraction * float(all_c.sum())
    expected = _brute_threshold(all_u, all_c, budget)

    original = st._sample_window
    bad = {
        "above": (to_bits(float(all_u.max()) * 1.01 + 1e-30, dtype), 4),
        "below": (0, 2),
    }

    def first_bad(*args: object) -> tuple[int, int]:
        monkeypatch.setattr(st, "_sample_window", original)
        return bad[first_window] if first_window in bad else original(*args)  # type: ignore[arg-type]

    calls = []
    classify = st._partition

    def counting(*args: object) -> object:
        calls.append(args[2:])
        return classify(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(st, "_sample_window", first_bad)
    monkeypatch.setattr(st, "_partition", counting)
    assert hard_threshold(segments, budget) == expected
    if first_window in bad or value_kind != "ties":
        assert len(calls) >= 2  # a window moved, or the selection recursed
    for init in (expected, expected * 1.5, expected / 3, 1e-20):
        assert hard_threshold(segments, budget, init=init) == expected


def test_negative_zero_values_are_zeros() -> None:
    v = torch.tensor([-0.0, 0.5, -0.0, 0.25, 0.0], dtype=F64)
    r = soft_topk(v, 1.0, 4.0, 5.0)
    assert r.threshold == 0.0
    assert r.hard_mask.tolist() == [True, True, True, True, True]
    assert float(r.mask.sum()) == pytest.approx(4.0, rel=1e-9)
    assert hard_threshold([(v, 1.0)], 5.0) == 0.0


@pytest.mark.parametrize("native_on", [False, True])
@pytest.mark.parametrize("cost_kind", ["unit", "scalar", "random"])
def test_out_buffers_receive_the_same_result(native_on: bool, cost_kind: str) -> None:
    from spartan_core import native

    n = 5000
    v = _values("uniform", n, seed=4, dtype=torch.float32)
    costs = _costs(cost_kind, n, seed=4, dtype=torch.float32)
    budget = 0.2 * float(_cost_tensor(costs, n).sum())
    with native.enabled(native_on):
        fresh = soft_topk(v, costs, budget, 8.0)
        out = (torch.full((n,), -1.0), torch.zeros(n, dtype=torch.bool))
        into = soft_topk(v, costs, budget, 8.0, out=out)
        again = soft_mask(v / costs, into.dual, 8.0)
    assert into.mask.data_ptr() == out[0].data_ptr()
    assert into.hard_mask.data_ptr() == out[1].data_ptr()
    assert torch.equal(into.mask, fresh.mask)
    assert torch.equal(into.hard_mask, fresh.hard_mask)
    assert (into.threshold, into.dual) == (fresh.threshold, fresh.dual)
    if cost_kind != "scalar":  # v / c rounds as the solver's own division does
        assert torch.equal(again, into.mask)


def test_out_buffers_are_checked_and_reuse_is_caught() -> None:
    v = torch.rand(100)
    good = (torch.empty(100), torch.empty(100, dtype=torch.bool))
    bad = {
        "pair": (torch.empty(100),),
        "out[0]": (torch.empty(99), good[1]),
        "dtype": (torch.empty(100, dtype=torch.float64), good[1]),
        "out[1]": (good[0], torch.empty(100)),
        "contiguous": (torch.empty(200)[::2], good[1]),
    }
    for name, out in bad.items():
        with pytest.raises(ValueError, match=r"out"):
            soft_topk(v, 1.0, 10.0, 5.0, out=out)  # type: ignore[arg-type]
        assert name
    leaf = v.clone().requires_grad_()
    loss = soft_topk(leaf, 1.0, 10.0, 5.0, out=good).mask.sum()
    soft_topk(leaf, 1.0, 20.0, 5.0, out=good)  # overwrites the mask the first graph saved
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()

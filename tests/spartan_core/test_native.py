"""The fused CPU kernels agree with the PyTorch code they replace, and are optional."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from spartan_core import (
    Sparsifier,
    SparsifierConfig,
    hard_threshold_and_dual,
    native,
    soft_mask,
    soft_topk,
)

T = TypeVar("T")

pytestmark = pytest.mark.skipif(not native.available(), reason="no C compiler on this machine")


def _values(n: int, seed: int = 0) -> torch.Tensor:
    """Non-negative float32 values with ties, zeros and a wide dynamic range."""
    gen = torch.Generator().manual_seed(seed)
    v = torch.rand(n, generator=gen).pow(3) * 10 ** torch.randint(-3, 3, (n,), generator=gen)
    v[:: n // 50 + 1] = 0.0
    v[1 :: n // 40 + 1] = v[2]  # a block of equal values
    return v


def _both(fn: Callable[[], T]) -> tuple[T, T]:
    """fn() with the kernels off, then on."""
    with native.enabled(False):
        reference = fn()
    with native.enabled(True):
        fused = fn()
    return reference, fused


def test_sigmoid_is_accurate_and_saturates_exactly() -> None:
    x = torch.linspace(-120, 120, 480_001)
    m = torch.empty_like(x)
    native.sigmoid_sums(x, None, 1.0, 0.0, m)
    ref = torch.sigmoid(x.double())
    live = x > -39.9
    rel = ((m.double() - ref).abs() / ref)[live]
    assert float(rel.max()) < 4e-7
    assert bool((m[x <= -40] == 0).all())  # saturates to exactly 0: no denormals downstream
    assert bool((m[x >= 20] == 1).all())
    assert bool(torch.isfinite(m).all())


@pytest.mark.parametrize("threads", [1, 2])
def test_each_kernel_matches_pytorch(threads: int) -> None:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        n = 300_001
        w = torch.randn(n)
        w[::7] = 0.0
        w[1::7] = -0.0
        m = torch.rand(n)
        h = torch.rand(n) > 0.5
        g = torch.randn(n)
        cost = torch.rand(n) + 0.5

        out = torch.empty(n)
        total, lo_bits, hi_bits = native.abs_scale(w, out, 0.25)
        assert_close(out, w.abs() * 0.25, rtol=0, atol=0)
        assert total == pytest.approx(float(w.double().abs().sum()), rel=1e-6)
        assert (lo_bits, hi_bits) == (0, int(out.max().view(torch.int32)))

        assert_close(native.masked_forward(w, m, h), w * m * h, rtol=0, atol=0)

        raised = w.abs()
        assert native.raise_to(raised, 0.5, 9.0) == int((w.abs() >= 0.5).sum())
        assert torch.equal(raised, torch.where(w.abs() >= 0.5, 9.0, w.abs()))
        assert native.float_of_bits(int(w.abs().max().view(torch.int32))) == float(w.abs().max())

        q = torch.empty(n)
        lo_bits, hi_bits = native.divide(w, cost, q)
        assert_close(q, w / cost, rtol=0, atol=0)
        assert (lo_bits, hi_bits) == (
            int(q.view(torch.int32).min()),
            int(q.view(torch.int32).max()),
        )

        s = m * (1 - m)
        grad, dot = native.soft_backward(g, w, m, 0.7)
        assert_close(grad, g * (m + 0.7 * s * w.abs()), rtol=1e-6, atol=1e-7)
        assert dot == pytest.approx(float((g * w * s).double().sum()), rel=1e-5)

        for coef in (0.3, -0.3):  # dL/dlam takes either sign
            expected = grad + coef * torch.copysign(s, w)
            got = native.dual_add(grad.clone(), w, m, coef)
            assert_close(got, expected, rtol=1e-6, atol=1e-7)
        # the sign of zero weights is kept, as torch.copysign does
        fresh = native.dual_add(None, w, m, 0.3)
        assert torch.equal(torch.signbit(fresh[1::7]), torch.signbit(w[1::7]))

        for c in (None, cost):
            ref_c = 1.0 if c is None else c
            ratio = float((g * s).double().sum() / (ref_c * s).double().sum())
            want = 2.0 * s * (g / ref_c - ratio)
            assert_close(native.topk_backward(g, m, c, 2.0), want, rtol=1e-4, atol=1e-6)

            u = _values(n)
            sig = torch.empty(n)
            kept, squares = native.sigmoid_sums(u, c, 3.0, -1.5, sig)
            ref_m = torch.sigmoid(3.0 * u.double() - 1.5)
            assert_close(sig.double(), ref_m, rtol=1e-6, atol=1e-7)
            assert kept == pytest.approx(float((ref_c * ref_m).sum()), rel=1e-6)
            assert squares == pytest.approx(float((ref_c * ref_m**2).sum()), rel=1e-6)

        u = _values(n)
        soft, hard = u.clone(), torch.empty(n, dtype=torch.bool)
        s_sum, kept = native.fill_masks(soft, 3.0, -1.5, 0.2, soft, hard)  # in place
        assert torch.equal(hard, u >= 0.2)
        assert kept == int((u >= 0.2).sum())
        again = torch.empty(n, dtype=torch.bool)
        assert native.ge(u, 0.2, again) == kept and torch.equal(again, hard)
        ref_m = torch.sigmoid(3.0 * u.double() - 1.5)
        assert_close(soft.double(), ref_m, rtol=1e-6, atol=1e-7)
        assert s_sum == pytest.approx(float((ref_m * (1 - ref_m)).sum()), rel=1e-5)
    finally:
        torch.set_num_threads(previous)


def test_partition_counts_and_collects_the_window() -> None:
    u = _values(200_003)
    bits = u.view(torch.int32)
    start, log_width = int(bits[5]) - 300, 10
    key = torch.clamp((bits - start) >> log_width, -1, 1)
    for cost in (None, torch.rand(u.numel()) + 0.5):
        above, inside = native.partition(u, cost, start, log_width, cap=100_000)
        want = (key > 0).sum() if cost is None else cost.double()[key > 0].sum()
        assert above == pytest.approx(float(want), rel=1e-6)
        assert inside is not None
        assert torch.equal(inside, torch.nonzero(key == 0).view(-1))
    # too many entries inside: the caller falls back to PyTorch
    assert native.partition(u, None, 0, 31, cap=1000)[1] is None


@pytest.mark.parametrize("costs", ["unit", "random"])
@pytest.mark.parametrize("warm", [False, True])
def test_soft_topk_matches_the_pytorch_path(costs: str, warm: bool) -> None:
    n = 400_000
    v = _values(n, seed=1).requires_grad_()
    c = 1.0 if costs == "unit" else torch.rand(n, generator=torch.Generator().manual_seed(2)) + 0.1
    total = n if costs == "unit" else float(c.sum())
    g = torch.randn(n)
    first = soft_topk(v, c, 0.1 * total, 20.0)
    inits = {"dual_init": first.dual * 1.01, "threshold_init": first.threshold} if warm else {}

    def run() -> tuple:
        r = soft_topk(v, c, 0.1 * total, 20.0, **inits)
        (grad,) = torch.autograd.grad(r.mask, v, g)
        return r, grad

    (ref, ref_grad), (got, got_grad) = _both(run)
    assert got.threshold == ref.threshold
    assert torch.equal(got.hard_mask, ref.hard_mask)
    assert got.dual == pytest.approx(ref.dual, rel=1e-6, abs=1e-9)
    assert_close(got.mask, ref.mask, rtol=1e-4, atol=2e-6)
    kept = (
        float((c * got.mask.detach().double()).sum())
        if costs == "random"
        else float(got.mask.detach().sum())
    )
    assert kept == pytest.approx(0.1 * total, rel=1e-5)
    assert_close(got_grad, ref_grad, rtol=1e-3, atol=1e-3 * float(ref_grad.abs().max()))


def test_many_segments_select_the_same_threshold() -> None:
    segments = [(_values(n, seed=n), cost) for n, cost in [(5000, 1.0), (70_000, 2.5), (333, 0.5)]]
    total = sum(u.numel() * cost for u, cost in segments)
    ref, got = _both(lambda: hard_threshold_and_dual(segments, 0.07 * total, 5.0))
    assert got[0] == ref[0]
    assert got[1] == pytest.approx(ref[1], rel=1e-6, abs=1e-9)


def test_sparsifier_training_matches_the_pytorch_path() -> None:
    """Masks, weights and gradients of a few float32 training steps agree on both paths."""

    def train() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 36, 10))
        config = SparsifierConfig(target=0.2, warmup_frac=0.0, beta_init=5.0, beta_max=20.0)
        sparsifier = Sparsifier(model, config, total_steps=20)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
        grads = []
        for _ in range(4):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            grads += [p.grad.clone() for p in model.parameters()]
            optimizer.step()
            sparsifier.step()
        masks = [layer.hard.clone() for layer in sparsifier.layers]
        return masks, grads

    (ref_masks, ref_grads), (masks, grads) = _both(train)
    for a, b in zip(masks, ref_masks, strict=True):
        assert (a != b).float().mean() < 1e-3  # a rounding tie may flip a weight or two
    for a, b in zip(grads, ref_grads, strict=True):
        assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_without_a_compiler_the_pytorch_code_runs(tmp_path: Path) -> None:
    code = (
        "import torch\n"
        "from spartan_core import native, soft_topk\n"
        "assert not native.available()\n"
        "r = soft_topk(torch.rand(1000), 1.0, 100.0, 10.0)\n"
        "assert int(r.hard_mask.sum()) == 100\n"
        "print('ok')\n"
    )
    env = {**os.environ, "CC": str(tmp_path / "no-such-compiler")}
    env["SPARTAN_NATIVE_CACHE"] = str(tmp_path / "cache")
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok"
    assert "native kernels unavailable" in run.stderr


def test_the_switch_turns_the_kernels_off(tmp_path: Path) -> None:
    code = "from spartan_core import native\nprint(native.available())\n"
    env = {**os.environ, "SPARTAN_NATIVE": "0"}
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.stdout.strip() == "False", run.stderr


@pytest.mark.parametrize("bad", ["nan", "inf", "negative"])
def test_bad_values_are_named_on_the_fused_path(bad: str) -> None:
    v = torch.rand(10_000)
    v[77] = {"nan": float("nan"), "inf": float("inf"), "negative": -1.0}[bad]
    costs = torch.rand(10_000) + 0.5
    message = {"nan": "values: contains NaN", "inf": "values: contains inf"}
    with pytest.raises(ValueError, match=message.get(bad, "values: values must be non-negative")):
        soft_topk(v, costs, 100.0, 5.0)


def test_negative_zero_values_are_kept_as_zero() -> None:
    v = torch.rand(10_000)
    v[:100] = -0.0
    costs = torch.rand(10_000) + 0.5
    ref, got = _both(lambda: soft_topk(v, costs, 100.0, 5.0))
    assert got.threshold == ref.threshold
    assert torch.equal(got.hard_mask, ref.hard_mask)


def test_only_contiguous_float32_cpu_tensors_take_the_kernels() -> None:
    x = torch.rand(64)
    assert native.usable(x, None, torch.zeros(64, dtype=torch.bool))
    assert not native.usable(x.double())
    assert not native.usable(torch.rand(8, 8).t())
    assert not native.usable(x, torch.empty(64, device="meta"))  # not in CPU memory
    with native.enabled(False):
        assert not native.usable(x)


def test_a_compiler_without_openmp_gets_a_single_threaded_build(tmp_path: Path) -> None:
    wrapper = tmp_path / "cc-without-openmp"
    wrapper.write_text(
        '#!/bin/sh\nfor a in "$@"; do [ "$a" = -fopenmp ] && exit 1; done\nexec cc "$@"\n'
    )
    wrapper.chmod(0o755)
    code = (
        "import torch\n"
        "from spartan_core import native\n"
        "torch.set_num_threads(2)\n"
        "u = torch.rand(1_000_003)\n"
        "got = native.sigmoid_sums(u, None, 3.0, -1.0, None)[0]\n"
        "want = float(torch.sigmoid(3.0 * u.double() - 1.0).sum())\n"
        "assert abs(got - want) < 1e-5 * want, (got, want)\n"
        "print(native.available())\n"
    )
    env = {**os.environ, "CC": str(wrapper), "SPARTAN_NATIVE_CACHE": str(tmp_path / "cache")}
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "True"
    (library,) = (tmp_path / "cache").glob("spartan_kernels-*.so")
    assert "GOMP" not in library.read_bytes().decode("latin-1")  # no OpenMP runtime linked


def test_soft_mask_of_a_strided_view_matches_soft_topk_bit_for_bit() -> None:
    v = _values(20_000, seed=5)
    result = soft_topk(v, 1.0, 2000.0, 7.0)
    strided = torch.stack((v, v), dim=1)[:, 0]  # same values, stride 2
    assert not strided.is_contiguous()
    assert torch.equal(soft_mask(strided, result.dual, 7.0), result.mask)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_training_gradient_matches_the_float64_reference(seed: int) -> None:
    """float32 gradients through the fused kernels equal the float64 PyTorch path's, the
    coupling term through the dual (which takes either sign) included."""

    def grads(dtype: torch.dtype) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 10)).to(dtype)
        config = SparsifierConfig(target=0.3, warmup_frac=0.0, beta_init=3.0, beta_max=3.0)
        Sparsifier(model, config, total_steps=10)
        gen = torch.Generator().manual_seed(seed)
        x, y = torch.randn(16, 20, generator=gen), torch.randint(0, 10, (16,), generator=gen)
        nn.functional.cross_entropy(model(x.to(dtype)), y).backward()
        return [p.grad for p in model.parameters()]

    reference = grads(torch.float64)
    got = grads(torch.float32)
    for a, b in zip(got, reference, strict=True):
        assert_close(a.double(), b, rtol=1e-4, atol=1e-6)

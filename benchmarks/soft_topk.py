"""Benchmark of the soft top-k mask update (issue 2, Benchmarks).

For n entries, unit and random costs, beta 1 and 20, it times on the current device

- the full mask update (soft mask + hard mask, ``spartan_core.soft_topk``), cold (no
  previous state) and warm (from the previous step's dual and threshold after an
  optimizer-like perturbation of the values),
- its backward (the implicit-differentiation gradient w.r.t. the values), through autograd
  and (``reuse``) the same fused kernel writing into a reused buffer,

and prints each as a ratio to one read pass (``x.sum()``) and to ``torch.sort`` of the same
tensor, all measured in the same run (median of repeats). The updates write into output
buffers reused from step to step (``out=``), as a training loop does; ``fresh`` is the warm
update allocating new outputs, whose first-touch page faults cost about 7 read passes at
25.6M on CPU. It also prints the mask error against
a float64 reference and the relative budget error.

    .venv/bin/python benchmarks/soft_topk.py            # n = 1M, 5M, 25.6M (a few minutes)
    .venv/bin/python benchmarks/soft_topk.py --quick    # n = 1M only
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch

from spartan_core import (
    SoftTopKResult,
    hard_threshold,
    hard_threshold_and_dual,
    native,
    soft_mask,
    soft_topk,
    solve_dual,
)
from spartan_core.device import default_device, synchronize

FRACTION = 0.1  # kept cost fraction
STEP = 1e-3  # relative size of the optimizer-like perturbation between warm steps


def timed(
    fn: Callable[[], object], baseline: Callable[[], object], device: torch.device, repeats: int
) -> tuple[float, float]:
    """Median wall times (ms) of ``fn`` and of ``baseline``, run alternately after a warm-up.

    Alternating keeps the ratio meaningful when other processes share the machine.
    """
    fn()
    baseline()
    synchronize(device)
    times, base_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        baseline()
        synchronize(device)
        middle = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - middle)
        base_times.append(middle - start)
    return 1e3 * statistics.median(times), 1e3 * statistics.median(base_times)


def time_backward(
    values: torch.Tensor,
    costs: torch.Tensor | float,
    budget: float,
    beta: float,
    previous: SoftTopKResult,
    read: Callable[[], object],
    device: torch.device,
    repeats: int,
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Backward of the mask update (gradient w.r.t. the values) with its read pass, in ms:
    through autograd (a fresh gradient tensor), and the fused kernel into a reused buffer
    (NaN where the kernels do not apply)."""
    leaf = values.clone().requires_grad_()
    result = soft_topk(
        leaf, costs, budget, beta, dual_init=previous.dual, threshold_init=previous.threshold
    )
    upstream = torch.randn(values.numel(), device=device)
    through_autograd = timed(
        lambda: torch.autograd.grad(result.mask, leaf, upstream, retain_graph=True),
        read,
        device,
        repeats,
    )
    # the same computation into a reused buffer: what remains without first-touch page faults
    cost = costs if isinstance(costs, torch.Tensor) else None
    scale = beta if cost is not None else beta / costs
    mask = result.mask.detach()
    if not native.usable(upstream, mask, cost):
        return through_autograd, (math.nan, math.nan)
    buffer = torch.zeros_like(mask)
    into_buffer = timed(
        lambda: native.topk_backward(upstream, mask, cost, scale, out=buffer), read, device, repeats
    )
    return through_autograd, into_buffer


def run_case(
    n: int, costs_kind: str, beta: float, device: torch.device, repeats: int
) -> dict[str, float]:
    """Time one configuration; every time comes with the read pass measured alongside it."""
    gen = torch.Generator(device="cpu").manual_seed(n + int(beta))
    weights = torch.randn(n, generator=gen).to(device)
    values = weights.abs()  # v = |w|
    costs: torch.Tensor | float
    if costs_kind == "unit":
        costs = 1.0
        total = float(n)
    else:
        costs = (torch.rand(n, generator=gen) * 1.5 + 0.25).to(device)
        total = float(costs.double().sum())
    budget = FRACTION * total
    # an optimizer-like step: w <- w - lr * g, so the values move a little
    moved = (weights + STEP * torch.randn(n, generator=gen).to(device)).abs_()
    del weights

    def read() -> object:
        return moved.sum()

    # output buffers reused from step to step, as a training loop (and the Sparsifier) does
    out = (torch.empty(n, device=device), torch.empty(n, dtype=torch.bool, device=device))
    with torch.no_grad():
        previous = soft_topk(values, costs, budget, beta)
        cold_ms, cold_read = timed(
            lambda: soft_topk(moved, costs, budget, beta, out=out), read, device, repeats
        )
        warm_kw = {"dual_init": previous.dual, "threshold_init": previous.threshold}
        warm_ms, warm_read = timed(
            lambda: soft_topk(moved, costs, budget, beta, out=out, **warm_kw),
            read,
            device,
            repeats,
        )
        fresh_ms, fresh_read = timed(
            lambda: soft_topk(moved, costs, budget, beta, **warm_kw), read, device, repeats
        )
        warm = soft_topk(
            moved, costs, budget, beta, dual_init=previous.dual, threshold_init=previous.threshold
        )
        cold = soft_topk(moved, costs, budget, beta)
    (backward_ms, backward_read), (kernel_ms, kernel_read) = time_backward(
        moved, costs, budget, beta, previous, read, device, repeats
    )

    # float64 reference from the same float32 inputs
    costs64 = costs.double() if isinstance(costs, torch.Tensor) else costs
    ref = soft_topk(moved.double(), costs64, budget, beta, tol=1e-13)
    mask_err = float((warm.mask.double() - ref.mask).abs().max())
    kept = float((warm.mask.double() * costs64).sum())
    return {
        "cold": cold_ms,
        "cold_read": cold_read,
        "warm": warm_ms,
        "warm_read": warm_read,
        "fresh": fresh_ms,
        "fresh_read": fresh_read,
        "backward": backward_ms,
        "backward_read": backward_read,
        "bwd_kernel": kernel_ms,
        "bwd_kernel_read": kernel_read,
        "cold_iters": cold.iterations,
        "warm_iters": warm.iterations,
        "mask_err": mask_err,
        "budget_err": abs(kept - budget) / budget,
        "hard_diff": int((warm.hard_mask != ref.hard_mask).sum()),
    }


def run_segments(device: torch.device, repeats: int) -> dict[str, float]:
    """The Sparsifier's path: one segment per ResNet-50 layer, a scalar cost per layer.

    Times ``hard_threshold_and_dual`` (warm) alone and followed by ``soft_mask`` per layer,
    against one read pass over all values.
    """
    from torchvision.models import resnet50

    with torch.device("meta"):
        shapes = [p.shape for p in resnet50().parameters() if p.dim() > 1]
    gen = torch.Generator(device="cpu").manual_seed(7)
    costs = [float(torch.randint(1, 50, (1,), generator=gen)) for _ in shapes]  # per-layer
    weights = [torch.randn(shape.numel(), generator=gen).to(device) for shape in shapes]
    units = [w.abs().div_(c) for w, c in zip(weights, costs, strict=True)]
    moved = [
        (w + STEP * torch.randn(w.numel(), generator=gen).to(device)).abs_().div_(c)
        for w, c in zip(weights, costs, strict=True)
    ]
    del weights
    total = sum(c * u.numel() for c, u in zip(costs, units, strict=True))
    budget, beta = FRACTION * total, 20.0
    first = list(zip(units, costs, strict=True))
    threshold = hard_threshold(first, budget)
    dual, _ = solve_dual(first, budget, beta)
    segments = list(zip(moved, costs, strict=True))

    def update() -> object:
        t, lam, _ = hard_threshold_and_dual(
            segments, budget, beta, threshold_init=threshold, dual_init=dual
        )
        return t, [soft_mask(u, lam, beta) for u in moved]

    def solver_only() -> object:
        return hard_threshold_and_dual(
            segments, budget, beta, threshold_init=threshold, dual_init=dual
        )

    def read() -> object:
        return [u.sum() for u in moved]

    warm_ms, read_ms = timed(update, read, device, repeats)
    solver_ms, solver_read_ms = timed(solver_only, read, device, repeats)
    return {
        "solver": solver_ms,
        "solver_read": solver_read_ms,
        "layers": len(shapes),
        "n": sum(u.numel() for u in moved),
        "warm": warm_ms,
        "read": read_ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="only n = 1M")
    parser.add_argument("--sizes", type=float, nargs="*", help="sizes in millions")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [1.0] if args.quick else (args.sizes or [1.0, 5.0, 25.6])
    device = default_device()
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"kept fraction {FRACTION}; warm: previous step's dual/threshold, values moved ~{STEP}")
    print("ratios: to one read pass x.sum() (timed alternately with each case) and to torch.sort")
    header = (
        f"{'n':>6} {'costs':>6} {'beta':>4} | {'read':>7} {'sort':>7} | "
        f"{'cold':>7} {'/read':>5} {'/sort':>6} {'it':>2} | "
        f"{'warm':>7} {'/read':>5} {'/sort':>6} {'it':>2} | {'fresh':>5} | "
        f"{'bwd':>7} {'/read':>5} {'reuse':>5} | {'mask err':>8} {'budget':>7} {'hard':>4}"
    )
    print(header)
    print("-" * len(header))
    for size in sizes:
        n = round(size * 1e6)
        x = torch.rand(n, device=device)
        sort_ms, _ = timed(lambda x=x: torch.sort(x), lambda x=x: x.sum(), device, 3)
        del x
        for costs_kind in ("unit", "random"):
            for beta in (1.0, 20.0):
                r = run_case(n, costs_kind, beta, device, args.repeats)
                cold_ratio = r["cold"] / r["cold_read"]
                warm_ratio = r["warm"] / r["warm_read"]
                bwd_ratio = r["backward"] / r["backward_read"]
                print(
                    f"{size:>5}M {costs_kind:>6} {beta:>4g} | {r['warm_read']:>5.1f}ms "
                    f"{sort_ms:>5.0f}ms | {r['cold']:>5.1f}ms {cold_ratio:>5.1f} "
                    f"{r['cold'] / sort_ms:>6.3f} {r['cold_iters']:>2} | {r['warm']:>5.1f}ms "
                    f"{warm_ratio:>5.1f} {r['warm'] / sort_ms:>6.3f} {r['warm_iters']:>2} | "
                    f"{r['fresh'] / r['fresh_read']:>5.1f} | "
                    f"{r['backward']:>5.1f}ms {bwd_ratio:>5.1f} "
                    f"{r['bwd_kernel'] / r['bwd_kernel_read']:>5.1f} | {r['mask_err']:>8.1e} "
                    f"{r['budget_err']:>7.0e} {r['hard_diff']:>4d}",
                    flush=True,
                )
    if not args.quick:
        r = run_segments(device, args.repeats)
        print(
            f"segments: ResNet-50, {r['layers']} layers, n = {r['n'] / 1e6:.1f}M, a scalar cost "
            f"per layer, beta 20, warm: hard_threshold_and_dual {r['solver']:.1f}ms = "
            f"{r['solver'] / r['solver_read']:.1f} read passes; with soft_mask per layer "
            f"{r['warm']:.1f}ms = {r['warm'] / r['read']:.1f} read passes"
        )


if __name__ == "__main__":
    main()

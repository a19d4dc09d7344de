"""Training-step cost of each sparsification method against the dense step, same run.

One training step = forward, backward, optimizer step and (for the sparse methods)
``sparsifier.step()``, on torchvision resnet18 / resnet50 (random init, 1000 classes) at
64 x 64 inputs on CPU. Each configuration runs in its own subprocess, so that its peak
resident memory (``ru_maxrss``) can be compared with the dense step's; configurations are
interleaved over ``--rounds`` rounds and each keeps its best round, which damps the noise of a
shared machine. Printed: median wall time and CPU time per step, both as ratios to dense, the
sparsifier's own share, and peak memory as a ratio to dense.

The sparse methods run mid-schedule (target 0.1, no warm-up, masks not yet frozen), the most
expensive phase: masks are recomputed after every step.

    .venv/bin/python benchmarks/train_step.py            # full: both models, batch 4 and 32
    .venv/bin/python benchmarks/train_step.py --quick    # resnet18, batch 4, few steps
    .venv/bin/python benchmarks/train_step.py --breakdown resnet50,4 --threads 1
    .venv/bin/python benchmarks/train_step.py --methods dense,spartan,spartan@0.4  # layer_floor
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

METHODS = ("dense", "spartan", "topkast", "magnitude")


def _config(method: str) -> Any:
    """The sparsifier config of a method name; ``spartan@0.4`` sets ``layer_floor=0.4``."""
    from spartan_core import SparsifierConfig

    name, _, floor = method.partition("@")
    return SparsifierConfig(
        method=name,
        target=0.1,
        warmup_frac=0.0,
        finetune_frac=0.2,
        layer_floor=float(floor or 0.0),
    )


def _setup(model_name: str, batch: int, method: str, steps: int) -> tuple[Any, ...]:
    """(model, sparsifier or None, optimizer, inputs, labels) for one configuration."""
    import torch
    import torchvision

    from spartan_core import Sparsifier

    torch.manual_seed(0)
    model = getattr(torchvision.models, model_name)(num_classes=1000)
    sparsifier = None
    if method != "dense":
        sparsifier = Sparsifier(model, _config(method), total_steps=10 * steps + 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch, 3, 64, 64)
    y = torch.randint(0, 1000, (batch,))
    return model, sparsifier, optimizer, x, y


def run_one(model_name: str, batch: int, method: str, steps: int, warmup: int) -> dict:
    """Time ``steps`` training steps after ``warmup`` untimed ones, in this process."""
    from torch import nn

    model, sparsifier, optimizer, x, y = _setup(model_name, batch, method, steps + warmup)
    model.train()
    wall, cpu, sparsify = [], [], []
    for i in range(warmup + steps):
        t0, c0 = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        t1 = time.perf_counter()
        if sparsifier is not None:
            sparsifier.step()
        t2, c2 = time.perf_counter(), time.process_time()
        if i >= warmup:
            wall.append(t2 - t0)
            cpu.append(c2 - c0)
            sparsify.append(t2 - t1)
    if sparsifier is not None:
        assert not sparsifier.frozen
    params = sum(p.numel() for p in model.parameters())
    return {
        "model": model_name,
        "batch": batch,
        "method": method,
        "params": params,
        "wall": statistics.median(wall),
        "cpu": statistics.median(cpu),
        "sparsify": statistics.median(sparsify),
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "kept": sparsifier.kept_cost_fraction() if sparsifier is not None else 1.0,
    }


def breakdown(model_name: str, batch: int, method: str, steps: int, warmup: int) -> dict:
    """CPU milliseconds per step by phase, and the soft top-k solver's share of the update."""
    import spartan_core.methods as methods

    solver: dict[str, float] = {}

    def timed(name: str, fn):  # type: ignore[no-untyped-def]
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            start = time.process_time()
            result = fn(*args, **kwargs)
            solver[name] = solver.get(name, 0.0) + time.process_time() - start
            return result

        return wrapper

    names = ("hard_threshold", "hard_threshold_and_dual")  # the solver calls of the methods
    originals = [getattr(methods, name) for name in names]
    for name, fn in zip(names, originals, strict=True):
        setattr(methods, name, timed(name, fn))
    try:
        return _phases(model_name, batch, method, steps, warmup, solver)
    finally:
        for name, fn in zip(names, originals, strict=True):
            setattr(methods, name, fn)


def _phases(
    model_name: str, batch: int, method: str, steps: int, warmup: int, solver: dict[str, float]
) -> dict:
    from torch import nn

    model, sparsifier, optimizer, x, y = _setup(model_name, batch, method, steps + warmup)
    phases = dict.fromkeys(("forward", "backward", "optimizer", "sparsifier"), 0.0)
    for i in range(warmup + steps):
        if i == warmup:
            solver.clear()
            phases = dict.fromkeys(phases, 0.0)
        c0 = time.process_time()
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        c1 = time.process_time()
        loss.backward()
        c2 = time.process_time()
        optimizer.step()
        c3 = time.process_time()
        if sparsifier is not None:
            sparsifier.step()
        c4 = time.process_time()
        for key, value in zip(phases, (c1 - c0, c2 - c1, c3 - c2, c4 - c3), strict=True):
            phases[key] += value
    out = {key: round(value / steps * 1e3, 1) for key, value in phases.items()}
    out.update({key: round(value / steps * 1e3, 1) for key, value in solver.items()})
    return out


def _spawn(model_name: str, batch: int, method: str, steps: int, warmup: int, threads: int) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        f"{model_name},{batch},{method}",
        "--steps",
        str(steps),
        "--warmup",
        str(warmup),
        "--threads",
        str(threads),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="resnet18, batch 4, 3 steps, 1 round")
    parser.add_argument("--models", default="resnet18,resnet50")
    parser.add_argument("--batches", default="4,32")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--steps", type=int, default=5, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--breakdown",
        metavar="MODEL,BATCH",
        help="instead: CPU ms per phase for each method of one configuration, e.g. resnet50,4",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.breakdown:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        model_name, batch = args.breakdown.split(",")
        for method in args.methods.split(","):
            phases = breakdown(model_name, int(batch), method, args.steps, args.warmup)
            print(f"{method:9}", "  ".join(f"{k} {v:.0f}" for k, v in phases.items()))
        return

    if args.child:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        model_name, batch, method = args.child.split(",")
        print(json.dumps(run_one(model_name, int(batch), method, args.steps, args.warmup)))
        return

    if args.quick:
        args.models, args.batches, args.steps, args.warmup, args.rounds = "resnet18", "4", 3, 1, 1
    methods = args.methods.split(",")
    if "dense" not in methods:
        methods.insert(0, "dense")
    configs = [
        (m, int(b), method)
        for m in args.models.split(",")
        for b in args.batches.split(",")
        for method in methods
    ]
    best: dict[tuple[str, int, str], dict] = {}
    for _ in range(args.rounds):
        for config in configs:
            result = _spawn(*config, args.steps, args.warmup, args.threads)
            kept = best.get(config)
            if kept is None:
                best[config] = result
            else:  # keep the fastest round, and the largest memory seen
                fastest = min(kept, result, key=lambda r: r["wall"])
                fastest["cpu"] = min(kept["cpu"], result["cpu"])
                fastest["maxrss_mb"] = max(kept["maxrss_mb"], result["maxrss_mb"])
                best[config] = fastest

    header = (
        f"{'model':9} {'batch':>5} {'method':9} {'step ms':>8} {'x dense':>8} "
        f"{'cpu x':>6} {'sparsify ms':>11} {'peak MB':>8} {'x dense':>8} {'kept':>6}"
    )
    print(header)
    print("-" * len(header))
    for m in args.models.split(","):
        for b in args.batches.split(","):
            dense = best[(m, int(b), "dense")]
            for method in methods:
                r = best[(m, int(b), method)]
                print(
                    f"{m:9} {b:>5} {method:9} {r['wall'] * 1e3:8.1f} "
                    f"{r['wall'] / dense['wall']:8.2f} {r['cpu'] / dense['cpu']:6.2f} "
                    f"{r['sparsify'] * 1e3:11.1f} {r['maxrss_mb']:8.0f} "
                    f"{r['maxrss_mb'] / dense['maxrss_mb']:8.2f} {r['kept']:6.3f}"
                )


if __name__ == "__main__":
    main()

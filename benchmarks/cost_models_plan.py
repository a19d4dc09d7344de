"""How long a one-shot plan takes for torchvision ResNet-50 on this machine.

Baseline, measured in the same run: one dense ResNet-50 forward at batch 1 (224 x 224).
Prints the median time of each plan and its ratio to the baseline.

    .venv/bin/python benchmarks/cost_models_plan.py [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse

import torch
import torchvision

import cost_models
from cost_models.kernels import median_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        baseline = median_ms(lambda: model(x), repeats=args.repeats)
    print(
        f"baseline: dense resnet50 forward, batch 1, 224x224, {torch.get_num_threads()} "
        f"thread(s): {baseline:.1f} ms"
    )
    flops = cost_models.get("flops", input_size=(3, 224, 224))
    cases = {
        "params, global, 1x1, f=0.1": dict(cost_model="params", target=0.1),
        "params, erk, 1x1, f=0.1": dict(cost_model="params", target=0.1, distribution="erk"),
        "params, global, 16x16 (conv1 and fc dense), f=0.1": dict(
            cost_model="params", target=0.1, structure=(16, 16), exclude=["conv1", "fc"]
        ),
        "flops (probe included), global, 1x1, f=0.3": dict(cost_model=flops, target=0.3),
    }
    print(f"{'plan':55s} {'median ms':>10s} {'/ baseline':>10s}")
    for name, kwargs in cases.items():
        ms = median_ms(
            lambda kwargs=kwargs: cost_models.plan(model, **kwargs), repeats=args.repeats
        )
        print(f"{name:55s} {ms:10.1f} {ms / baseline:10.2f}")


if __name__ == "__main__":
    main()

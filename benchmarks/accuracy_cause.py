"""Why spartan trailed Top-KAST on a plain MLP (issue 12): the experiment behind the defaults.

    .venv/bin/python benchmarks/accuracy_cause.py '{"name": ["spartan", 0.95, {CONFIG}]}'

The issue's task: an MLP 40-512-512-10 (ReLU, no normalisation; the two hidden layers masked,
the head dense), SGD momentum 0.9, lr 0.05 cosine, batch 100, 30 epochs, on
``make_classification(n_samples=12000, n_features=40, n_informative=24, n_redundant=8,
n_classes=10, n_clusters_per_class=3, class_sep=1.2, flip_y=0.02, random_state=3)`` (first
10,000 train, the rest test), seeds 0 and 1. Each variant is a method, a sparsity and extra
SparsifierConfig fields (e.g. ``{"forward": "soft", "weight_grad": "soft"}``, the published
form). Prints each seed's test top-1 (%) and the mean. One thread.
"""

from __future__ import annotations

import json
import math
import sys
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spartan_core import Sparsifier, SparsifierConfig

SEEDS = (0, 1)


def task() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=12000,
        n_features=40,
        n_informative=24,
        n_redundant=8,
        n_classes=10,
        n_clusters_per_class=3,
        class_sep=1.2,
        flip_y=0.02,
        random_state=3,
    )
    x = torch.tensor(x, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.int64)
    x = (x - x[:10000].mean(0)) / x[:10000].std(0)
    return x[:10000], y[:10000], x[10000:], y[10000:]


def accuracy(method: str, sparsity: float, seed: int, data: tuple, options: dict) -> float:
    x_tr, y_tr, x_te, y_te = data
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(40, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)
    )
    batch, epochs = 100, 30
    total = epochs * (len(y_tr) // batch)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total))
    )
    sparsifier = None
    if method != "dense":
        config = SparsifierConfig(method=method, target=1 - sparsity, include=("0", "2"), **options)
        sparsifier = Sparsifier(model, config, total_steps=total)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(y_tr), generator=gen)
        for i in range(0, len(y_tr), batch):
            idx = order[i : i + batch]
            loss = F.cross_entropy(model(x_tr[idx]), y_tr[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if sparsifier is not None:
                sparsifier.step()
    if sparsifier is not None:
        sparsifier.finalize()
    with torch.no_grad():
        return 100 * float((model(x_te).argmax(1) == y_te).float().mean())


def main() -> None:
    torch.set_num_threads(1)
    data = task()
    for name, (method, sparsity, options) in json.loads(sys.argv[1]).items():
        start = time.perf_counter()
        accs = [accuracy(method, sparsity, s, data, options) for s in SEEDS]
        print(
            f"{name}: {[round(a, 2) for a in accs]} mean {sum(accs) / len(accs):.2f} "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
